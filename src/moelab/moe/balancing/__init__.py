"""Balancing rules: auxiliary losses and selection biases that spread tokens over experts.

Each rule is one class in one file, active when its coefficient (or rate) is > 0. A rule may add a
loss (`loss`), a per-expert bias used only to pick experts (`selection_bias`), and update state
after each optimiser step (`update`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component, Registry, import_all

BALANCING = Registry("balancing rule")


class BalancingRule(Component, nn.Module):
    @classmethod
    def enabled(cls, cfg) -> bool:
        return True

    def loss(self, scores: torch.Tensor, weights: torch.Tensor, selected_expert: torch.Tensor) -> torch.Tensor | None:
        """scores/weights: [N, E] of real tokens; selected_expert: [S] expert of each selected slot."""
        return None

    def selection_bias(self) -> torch.Tensor | None:
        return None

    def record(self, selected_expert: torch.Tensor) -> None:
        """Called on every forward with the selected slots' experts."""

    def update(self) -> None:
        """Called after every optimiser step."""


def build_balancing(cfg) -> nn.ModuleDict:
    return nn.ModuleDict({name: cls(cfg) for name, cls in BALANCING.classes.items() if cls.enabled(cfg)})


import_all(__name__, __path__)
