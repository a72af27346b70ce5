"""scores_i = (W_q h) . e_i / sqrt(d): a token query attends over learned expert embeddings e in R^{E x d}.

`moe.attention_scaled: false` drops the 1/sqrt(d), as in the SparTMoE seed code.

Initialisation: a fresh router of either form starts with the logit scale of a fresh linear router (same
`init.router_scale`), so that a comparison of router forms does not also compare starting scales. The query
takes the Switch init of a linear router; the expert embeddings are N(0, 1 / (d * scale^2)), which makes
var(score) = var(linear logit) for any token distribution of the same variance. (Both factors at the Switch
init started the scaled form ~30x smaller at d 64: 0.009 vs 0.28 logit std.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component, Param
from . import ROUTERS


@ROUTERS.register("attention")
class AttentionRouter(Component, nn.Module):
    params = {"attention_scaled": Param(True, "attention router divides by sqrt(d) (false: SparTMoE's unscaled form)")}

    def __init__(self, cfg):
        super().__init__()
        d = cfg.d_model
        self.query = nn.Linear(d, d, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(cfg.n_routed, d))
        self.scale = 1.0 / math.sqrt(d) if cfg.attention_scaled else 1.0
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        d = self.query.in_features
        switch_init_(self.query.weight, init.router_scale, d)
        # var(q_j) = router_scale * var(h) (the linear router's logit variance); score = scale * sum_j q_j e_j
        # has var d * scale^2 * var(q_j) * var(e): equal when var(e) = 1 / (d * scale^2)
        nn.init.normal_(self.expert_embeddings, std=1.0 / (self.scale * math.sqrt(d)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        q = self.query(h)  # [N, d]
        return (q @ self.expert_embeddings.t()) * self.scale

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        return 2.0 * cfg.d_model * cfg.d_model + 2.0 * cfg.d_model * cfg.n_routed
