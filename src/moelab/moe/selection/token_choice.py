"""Token choice: each token picks experts (Switch / GShard top-k, or soft routing with top_k = 0)."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component, Param
from . import SELECTIONS, Slots, nonzero_slots


@SELECTIONS.register("token_choice")
class TokenChoice(Component, nn.Module):
    """top_k >= 1: each token's k largest weights, ranked by weight + selection bias (the bias changes
    which experts are picked, never the weights). top_k = 0 (soft routing): every expert the
    normaliser gives a non-zero weight, i.e. all of them for softmax. Slots come out token-major,
    in each token's order of preference."""

    params = {"renormalize": Param(False, "rescale the kept top-k weights of a token to sum to 1")}

    def __init__(self, cfg):
        super().__init__()
        from ..normalisers import NORMALISERS

        self.k = cfg.k_routed
        # sigmoid gating (DeepSeek-V3) always normalises over the selected experts
        self.renormalize = cfg.renormalize or getattr(NORMALISERS.get(cfg.norm), "renormalize_selected", False)

    def forward(
        self, weights: torch.Tensor, selection_bias: torch.Tensor | None = None, group: torch.Tensor | None = None
    ) -> Slots:
        n, e = weights.shape
        k = self.k or e
        ranking = weights if selection_bias is None else weights + selection_bias  # [N, E]
        if self.k:
            expert = ranking.topk(k, dim=-1).indices  # [N, k]
        else:
            expert = ranking.argsort(dim=-1, descending=True, stable=True)  # [N, E] by preference
        weight = weights.gather(-1, expert)  # [N, k]
        if self.renormalize:
            weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-9)
        token = torch.arange(n, device=weights.device).unsqueeze(1).expand(n, k)
        rank = torch.arange(k, device=weights.device).expand(n, k)
        return nonzero_slots(token, expert, weight, rank)
