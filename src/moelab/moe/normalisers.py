"""Normalisers: scores [N, E] -> routing weights [N, E] on the probability simplex.

softmax is dense; sparsemax and entmax-1.5 (from the `entmax` package, exact sort-based
algorithms) put exactly zero weight on low-scoring experts, so the number of experts a
token uses varies per token.
"""
from __future__ import annotations

import torch
from torch import nn


class Softmax(nn.Module):
    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)


class Sparsemax(nn.Module):
    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        from entmax import sparsemax
        return sparsemax(scores, dim=-1)


class Entmax15(nn.Module):
    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        from entmax import entmax15
        return entmax15(scores, dim=-1)


NORMALISERS = {"softmax": Softmax, "sparsemax": Sparsemax, "entmax15": Entmax15}


def build_normaliser(name: str) -> nn.Module:
    return NORMALISERS[name]()
