"""Cosine router (X-MoE; Chi et al. 2022, "On the Representation Collapse of Sparse Mixture of Experts").

scores_i = cos(W_p h, e_i) / tau: the token is projected to a low dimension, token and expert
embeddings are L2-normalised, so routing compares directions on a low-dimensional hypersphere instead
of dot products in the model space (which pull tokens towards expert centroids: representation
collapse). tau is learned. The projection dimension (16) and the initial temperature (0.07) are those
of the authors' released implementation (microsoft/torchscale, torchscale/component/xmoe/routing.py:
`Linear(model_dim, 16)` and `TEMPERATURE_FOR_L_UAX = 0.07`).

tau is learned as log(1 / tau), clamped at 1 / tau <= 100, so it stays positive and the scores
bounded (|score| <= 100; CLIP's clamp). Weights: Switch init of the router role.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component, Param, positive_int
from . import ROUTERS

MAX_INVERSE_TEMPERATURE = 100.0


def positive(value) -> str | None:
    return None if math.isfinite(value) and value > 0 else "a finite number > 0"


@ROUTERS.register("cosine")
class CosineRouter(Component, nn.Module):
    params = {
        "cosine_dim": Param(16, "cosine router: dimension tokens and expert embeddings are compared in", positive_int),
        "cosine_temperature": Param(0.07, "cosine router: initial temperature tau (learned)", positive),
    }

    def __init__(self, cfg):
        super().__init__()
        self.project = nn.Linear(cfg.d_model, cfg.cosine_dim, bias=False)  # W_p: d -> cosine_dim
        self.expert_embeddings = nn.Parameter(torch.empty(cfg.n_routed, cfg.cosine_dim))  # [E, cosine_dim]
        self.log_inverse_temperature = nn.Parameter(torch.empty(()))
        self.initial_temperature = cfg.cosine_temperature
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.project.weight, init.router_scale, self.project.in_features)
        switch_init_(self.expert_embeddings, init.router_scale, self.expert_embeddings.shape[1])
        with torch.no_grad():
            self.log_inverse_temperature.fill_(-math.log(self.initial_temperature))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        token = F.normalize(self.project(h), dim=-1)  # [N, cosine_dim], unit length
        experts = F.normalize(self.expert_embeddings, dim=-1)  # [E, cosine_dim], unit length
        inverse_temperature = self.log_inverse_temperature.clamp(max=math.log(MAX_INVERSE_TEMPERATURE)).exp()
        return (token @ experts.t()) * inverse_temperature

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """The projection d -> cosine_dim and the E cosine dot products (normalisation is not a matmul)."""
        return 2.0 * cfg.d_model * cfg.cosine_dim + 2.0 * cfg.cosine_dim * cfg.n_routed
