"""The skeleton every expert type shares: E two-matmul feed-forward networks stored as stacked weights,
w_in [E, d, i] and w_out [E, f, d], run on expert-sorted slots as two grouped matmuls (or, where the
rows are not 16-byte aligned, a loop over experts, never over tokens). An expert type says only what
lies between the two matmuls (`hidden`: [S, i] -> [S, f]), how wide w_in is (i) and its FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component
from . import compute_dtype, grouped_matmul, grouped_mm_usable


class GroupedFFNExperts(Component, nn.Module):
    in_factor = 1  # w_in is in_factor x f wide (SwiGLU: W_gate | W_up side by side)

    def __init__(self, cfg):
        super().__init__()
        n, d, f = cfg.n_routed, cfg.d_model, cfg.expert_width
        self.w_in = nn.Parameter(torch.empty(n, d, self.in_factor * f))  # [E, d, i]
        self.w_out = nn.Parameter(torch.empty(n, f, d))  # [E, f, d]
        self.use_grouped_mm = True  # False: always the per-expert loop (the fallback; tests compare the two)
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.w_in, init.ffn_scale, self.w_in.shape[1])  # fan-in d
        switch_init_(self.w_out, init.ffn_scale, self.w_out.shape[1])  # fan-in f

    def hidden(self, projected: torch.Tensor) -> torch.Tensor:
        """[S, i] (x w_in[e]) -> [S, f], what the expert computes between its two matmuls."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x: [S, d] slots sorted by expert; tokens_per_expert: [E]. Returns [S, d] in the compute dtype."""
        dtype = compute_dtype(x)
        x, w_in, w_out = x.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype)
        # w_out.mT: the hidden rows are f wide, and grouped_mm needs every row 16-byte aligned
        if self.use_grouped_mm and grouped_mm_usable(x, w_in, w_out, w_out.mT):
            ends = torch.cumsum(tokens_per_expert, 0).to(torch.int32)  # [E] end row of each expert's block
            return grouped_matmul(self.hidden(grouped_matmul(x, w_in, ends)), w_out, ends)  # [S, f] -> [S, d]
        return self._loop(x, w_in, w_out, tokens_per_expert)

    def _loop(self, x, w_in, w_out, tokens_per_expert) -> torch.Tensor:
        # One contiguous block per expert; a loop over experts, never over tokens. unbind, not w_in[e]:
        # the backward of E separate selects writes E zero-filled [E, d, i] gradients (E^2 traffic).
        w_in, w_out = w_in.unbind(0), w_out.unbind(0)
        blocks = x.split(tokens_per_expert.tolist())  # host sync: split sizes are Python ints
        outputs = [self.hidden(block @ w_in[e]) @ w_out[e] for e, block in enumerate(blocks) if block.shape[0]]
        return torch.cat(outputs) if outputs else x.new_zeros(0, w_out[0].shape[-1])
