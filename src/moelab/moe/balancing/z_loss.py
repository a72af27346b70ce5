"""Router z-loss: coef * mean over tokens of logsumexp(scores)^2 (Zoph et al. 2022, ST-MoE)."""

from __future__ import annotations

import torch

from ..registry import Param, non_negative
from . import BALANCING, BalancingRule


def router_z_loss(scores: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(scores.float(), dim=-1).pow(2).mean()


@BALANCING.register("z_loss")
class RouterZLoss(BalancingRule):
    params = {"z_loss_coef": Param(0.001, "router z-loss coefficient (0: off)", non_negative)}

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.z_loss_coef > 0

    def __init__(self, cfg):
        super().__init__()
        self.coef = cfg.z_loss_coef

    def loss(self, scores, weights, selected_expert):
        return self.coef * router_z_loss(scores)
