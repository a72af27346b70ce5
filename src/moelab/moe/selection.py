"""Selection: routing weights [N, E] -> the (token, expert, weight) slots that are computed.

A slot is one token sent to one expert. Slots come out token-major (all of token 0's
slots, then token 1's, ...), in each token's order of preference, and slots whose weight
is exactly zero are never produced, so no expert computes a token it has no weight for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Slots:
    token: torch.Tensor    # [S] long: which token (row of the flattened input)
    expert: torch.Tensor   # [S] long: which expert
    weight: torch.Tensor   # [S] float: the weight its output is scaled by (differentiable)
    rank: torch.Tensor     # [S] long: 0 for a token's first choice, 1 for its second, ...

    def keep(self, mask: torch.Tensor) -> "Slots":
        return Slots(self.token[mask], self.expert[mask], self.weight[mask], self.rank[mask])


def _nonzero_slots(token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor, rank: torch.Tensor) -> Slots:
    # token/expert/weight/rank: [N, k]; flattening row-major keeps the token-major order.
    slots = Slots(token.reshape(-1), expert.reshape(-1), weight.reshape(-1), rank.reshape(-1))
    return slots.keep(slots.weight != 0)


class TopK(nn.Module):
    """Keep each token's k largest weights (ranked by weight + selection bias)."""

    def __init__(self, k: int, renormalize: bool = False):
        super().__init__()
        self.k, self.renormalize = k, renormalize

    def forward(self, weights: torch.Tensor, selection_bias: torch.Tensor | None = None) -> Slots:
        ranking = weights if selection_bias is None else weights + selection_bias    # [N, E]
        expert = ranking.topk(self.k, dim=-1).indices                                # [N, k]
        weight = weights.gather(-1, expert)                                          # [N, k]
        if self.renormalize:
            weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-9)
        n = weights.shape[0]
        token = torch.arange(n, device=weights.device).unsqueeze(1).expand(n, self.k)
        rank = torch.arange(self.k, device=weights.device).expand(n, self.k)
        return _nonzero_slots(token, expert, weight, rank)


class AllExperts(nn.Module):
    """Soft routing: every expert the normaliser gives a non-zero weight (all of them for softmax)."""

    def forward(self, weights: torch.Tensor, selection_bias: torch.Tensor | None = None) -> Slots:
        n, e = weights.shape
        order = weights.argsort(dim=-1, descending=True, stable=True)               # [N, E] by preference
        weight = weights.gather(-1, order)
        token = torch.arange(n, device=weights.device).unsqueeze(1).expand(n, e)
        rank = torch.arange(e, device=weights.device).expand(n, e)
        return _nonzero_slots(token, order, weight, rank)


def build_selection(top_k: int, renormalize: bool) -> nn.Module:
    return TopK(top_k, renormalize) if top_k > 0 else AllExperts()
