"""softmax(scores): dense, every expert gets a positive weight."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component
from . import NORMALISERS


@NORMALISERS.register("softmax")
class Softmax(Component, nn.Module):
    on_simplex, sparse = True, False

    def __init__(self, cfg):
        super().__init__()

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)
