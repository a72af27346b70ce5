"""The classic expert: y = act(x W_in[e]) W_out[e], W_in: [E, d, f], W_out: [E, f, d] (Switch, GShard)."""

from __future__ import annotations

import torch
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component
from . import ACTIVATIONS, EXPERTS, compute_dtype, grouped_matmul, grouped_mm_usable


@EXPERTS.register("mlp")
class GroupedExperts(Component, nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n, d, f = cfg.n_routed, cfg.d_model, cfg.expert_width
        self.w_in = nn.Parameter(torch.empty(n, d, f))
        self.w_out = nn.Parameter(torch.empty(n, f, d))
        self.act = ACTIVATIONS[cfg.activation]
        self.use_grouped_mm = True  # False: always the per-expert loop (the fallback; tests compare the two)
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.w_in, init.ffn_scale, self.w_in.shape[1])  # fan-in d
        switch_init_(self.w_out, init.ffn_scale, self.w_out.shape[1])  # fan-in f

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """Per expert a token visits: two matmuls, d -> f -> d."""
        return 4.0 * cfg.d_model * cfg.expert_width

    def forward(self, x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x: [S, d] slots sorted by expert; tokens_per_expert: [E]. Returns [S, d] in the compute dtype."""
        dtype = compute_dtype(x)
        x, w_in, w_out = x.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype)
        if self.use_grouped_mm and grouped_mm_usable(x, w_in, w_out):
            ends = torch.cumsum(tokens_per_expert, 0).to(torch.int32)  # [E] end row of each expert's block
            hidden = self.act(grouped_matmul(x, w_in, ends))  # [S, f]
            return grouped_matmul(hidden, w_out, ends)  # [S, d]
        return self._loop(x, w_in, w_out, tokens_per_expert)

    def _loop(self, x, w_in, w_out, tokens_per_expert) -> torch.Tensor:
        # One contiguous block per expert; a loop over experts, never over tokens. unbind, not w_in[e]:
        # the backward of E separate selects writes E zero-filled [E, d, f] gradients (E^2 traffic).
        w_in, w_out = w_in.unbind(0), w_out.unbind(0)
        blocks = x.split(tokens_per_expert.tolist())  # host sync: split sizes are Python ints
        outputs = [self.act(block @ w_in[e]) @ w_out[e] for e, block in enumerate(blocks) if block.shape[0]]
        return torch.cat(outputs) if outputs else x.new_zeros(0, w_out[0].shape[-1])
