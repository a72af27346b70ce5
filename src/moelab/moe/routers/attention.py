"""scores_i = (W_q h) . e_i / sqrt(d): a token query attends over learned expert embeddings e in R^{E x d}.

`moe.attention_scaled: false` drops the 1/sqrt(d), as in the SparTMoE seed code.
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
        switch_init_(self.expert_embeddings, init.router_scale, d)  # a [E, d] projection of the query

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        q = self.query(h)  # [N, d]
        return (q @ self.expert_embeddings.t()) * self.scale

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        return 2.0 * cfg.d_model * cfg.d_model + 2.0 * cfg.d_model * cfg.n_routed
