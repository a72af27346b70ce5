"""SwiGLU experts (Shazeer 2020, "GLU Variants Improve Transformer"; the experts of Mixtral and OLMoE):
y = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]. W_gate and W_up are stored side by side as
w_in [E, d, 2f] (gate | up), so the two input projections are one grouped matmul; w_out [E, f, d].

Always silu-gated (the model's `activation` applies to dense FFNs and `mlp` experts). Per token and
expert: 3 matmuls of d x f, 6 d f FLOPs, 3 d f weights (an `mlp` expert of the same f: 4 d f, 2 d f).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component
from . import EXPERTS, compute_dtype, grouped_matmul, grouped_mm_usable


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """[S, 2f] (x W_gate | x W_up) -> [S, f]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@EXPERTS.register("swiglu")
class SwiGLUExperts(Component, nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n, d, f = cfg.n_routed, cfg.d_model, cfg.expert_width
        self.w_in = nn.Parameter(torch.empty(n, d, 2 * f))  # [E, d, 2f]: W_gate | W_up
        self.w_out = nn.Parameter(torch.empty(n, f, d))  # W_down
        self.use_grouped_mm = True  # False: always the per-expert loop (the fallback; tests compare the two)
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.w_in, init.ffn_scale, self.w_in.shape[1])  # fan-in d (W_gate and W_up alike)
        switch_init_(self.w_out, init.ffn_scale, self.w_out.shape[1])  # fan-in f

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """Per expert a token visits: gate and up d -> f, down f -> d."""
        return 6.0 * cfg.d_model * cfg.expert_width

    def forward(self, x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x: [S, d] slots sorted by expert; tokens_per_expert: [E]. Returns [S, d] in the compute dtype."""
        dtype = compute_dtype(x)
        x, w_in, w_out = x.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype)
        # w_out.mT: the hidden rows are f wide, and grouped_mm needs every row 16-byte aligned
        if self.use_grouped_mm and grouped_mm_usable(x, w_in, w_out, w_out.mT):
            ends = torch.cumsum(tokens_per_expert, 0).to(torch.int32)  # [E] end row of each expert's block
            hidden = swiglu(grouped_matmul(x, w_in, ends))  # [S, f]
            return grouped_matmul(hidden, w_out, ends)  # [S, d]
        # one contiguous block per expert (unbind: see experts/mlp.py); split sizes sync the host
        w_in, w_out = w_in.unbind(0), w_out.unbind(0)
        blocks = x.split(tokens_per_expert.tolist())
        outputs = [swiglu(block @ w_in[e]) @ w_out[e] for e, block in enumerate(blocks) if block.shape[0]]
        return torch.cat(outputs) if outputs else x.new_zeros(0, w_out[0].shape[-1])
