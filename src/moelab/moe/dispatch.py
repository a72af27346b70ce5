"""Dispatch: sort the slots by expert, run the experts on contiguous blocks, add the outputs back per token.

Shapes: N tokens, S slots (token -> expert pairs), E experts, d model width. Kept apart from
routing (MegaBlocks-style): it only sees the slots, never how they were chosen.
"""

from __future__ import annotations

import torch


def dispatch_combine(
    x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor, experts, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort slots by expert, run each expert once on its contiguous block, scatter-add weighted outputs.

    x: [N, d]; token/expert/weight: [S]. Returns (out [N, d] in x's dtype, tokens_per_expert [E]).
    """
    order = expert.argsort(stable=True)  # [S] slots grouped by expert
    tokens_per_expert = torch.bincount(expert, minlength=n_experts)
    token_sorted = token[order]
    # index_select, not x[token_sorted]: its backward is index_add_, which is deterministic on CPU,
    # whereas advanced indexing's backward (index_put_ accumulate) sums duplicate tokens in a varying order.
    expert_out = experts(x.index_select(0, token_sorted), tokens_per_expert)  # [S, d]
    weighted = (expert_out * weight[order].unsqueeze(-1).to(expert_out.dtype)).to(x.dtype)
    out = torch.zeros_like(x).index_add_(0, token_sorted, weighted)
    return out, tokens_per_expert
