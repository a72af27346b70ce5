"""scores = h W_r, W_r in R^{d x E} (Switch / GShard)."""

from __future__ import annotations

import torch
from torch import nn

from ..init import InitConfig, switch_init_
from ..registry import Component
from . import ROUTERS


@ROUTERS.register("linear")
class LinearRouter(Component, nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.n_routed, bias=False)
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.proj.weight, init.router_scale, self.proj.in_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        return self.proj(h)

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        return 2.0 * cfg.d_model * cfg.n_routed
