"""Experts stored as stacked weight tensors, run as one contiguous matmul per expert."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _grouped_mm_available(x: torch.Tensor) -> bool:
    # torch's grouped GEMM runs on CUDA (bf16); its CPU version has no backward, so CPU loops over experts.
    return x.is_cuda and hasattr(F, "grouped_mm") and x.dtype == torch.bfloat16


class GroupedExperts(nn.Module):
    """E two-layer MLPs: y = act(x W_in[e]) W_out[e]. W_in: [E, d, f], W_out: [E, f, d]."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(n_experts, d_model, d_ff) / math.sqrt(d_model))
        self.w_out = nn.Parameter(torch.randn(n_experts, d_ff, d_model) / math.sqrt(d_ff))
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x: [S, d] slots sorted by expert; tokens_per_expert: [E]. Returns [S, d]."""
        if _grouped_mm_available(x):
            offsets = torch.cumsum(tokens_per_expert, 0).to(torch.int32)
            hidden = self.act(F.grouped_mm(x, self.w_in.to(x.dtype), offs=offsets))
            return F.grouped_mm(hidden, self.w_out.to(x.dtype), offs=offsets)
        outputs = []
        blocks = x.split(tokens_per_expert.tolist())            # one contiguous block per expert
        for e, block in enumerate(blocks):                      # a loop over experts, never over tokens
            if block.shape[0]:
                outputs.append(self.act(block @ self.w_in[e].to(x.dtype)) @ self.w_out[e].to(x.dtype))
        if not outputs:
            return x.new_zeros(0, self.w_out.shape[-1])
        return torch.cat(outputs)


def dispatch_combine(x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor,
                     experts: GroupedExperts, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort slots by expert, run each expert once on its contiguous block, scatter-add weighted outputs.

    x: [N, d]; token/expert/weight: [S]. Returns (out [N, d], tokens_per_expert [E]).
    """
    order = expert.argsort(stable=True)                       # slots grouped by expert
    tokens_per_expert = torch.bincount(expert, minlength=n_experts)
    token_sorted = token[order]
    # index_select, not x[token_sorted]: its backward is index_add_, which is deterministic on CPU,
    # whereas advanced indexing's backward (index_put_ accumulate) sums duplicate tokens in a varying order.
    expert_out = experts(x.index_select(0, token_sorted), tokens_per_expert)  # [S, d]
    weighted = expert_out * weight[order].unsqueeze(-1).to(expert_out.dtype)
    out = torch.zeros_like(x).index_add_(0, token_sorted, weighted.to(x.dtype))
    return out, tokens_per_expert
