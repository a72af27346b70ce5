"""Sigmoid gating (DeepSeek-V3 technical report, 2024, sec. 2.1.2): affinities s_i = sigmoid(score_i),
each in (0, 1) and NOT on the simplex. Each token takes its top-k experts (ranked by s_i + the
aux-loss-free selection bias, which changes which experts are picked, never the weights), and its
gate values are the affinities normalised over the selected experts: g_i = s_i / sum_{j in top-k} s_j.
The `renormalize` option is therefore implied (TokenChoice reads `renormalize_selected`).

What the statistics and losses read (the layer, `on_simplex` False): the Switch aux loss's P_i and the
routing entropy use the affinities normalised over ALL experts, s_i / sum_j s_j, as DeepSeek-V3's
balance loss does (a raw mean sigmoid is not a share of anything: the loss would just push every
affinity down). Soft routing (top_k = 0) is refused: sigmoid gating selects top-k.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component, OptionError
from . import NORMALISERS


@NORMALISERS.register("sigmoid")
class Sigmoid(Component, nn.Module):
    on_simplex, sparse = False, False
    renormalize_selected = True

    def __init__(self, cfg):
        super().__init__()

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.top_k == 0:
            raise OptionError(
                "top_k", cfg.top_k, "1..n_experts with norm sigmoid (it picks top-k experts; there is no soft form)"
            )

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores)
