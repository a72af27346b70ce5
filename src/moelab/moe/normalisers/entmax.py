"""sparsemax and entmax-1.5 (the `entmax` package's exact sort-based algorithms): on the simplex,
with exactly zero weight on low-scoring experts (Martins & Astudillo 2016; Peters et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component
from . import NORMALISERS


@NORMALISERS.register("sparsemax")
class Sparsemax(Component, nn.Module):
    on_simplex, sparse = True, True

    def __init__(self, cfg):
        super().__init__()

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        from entmax import sparsemax

        return sparsemax(scores, dim=-1)


@NORMALISERS.register("entmax15")
class Entmax15(Component, nn.Module):
    on_simplex, sparse = True, True

    def __init__(self, cfg):
        super().__init__()

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        from entmax import entmax15

        return entmax15(scores, dim=-1)
