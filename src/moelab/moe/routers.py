"""Routers: token hidden states [N, d] -> expert scores (logits) [N, E]."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import MoEConfig


class LinearRouter(nn.Module):
    """scores = h W_r, W_r in R^{d x E} (Switch / GShard)."""

    def __init__(self, d_model: int, n_experts: int):
        super().__init__()
        self.proj = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        return self.proj(h)


class AttentionRouter(nn.Module):
    """scores_i = (W_q h) . e_i / sqrt(d): a token query attends over learned expert embeddings e in R^{E x d}.

    `scaled=False` drops the 1/sqrt(d), as in the SparTMoE seed code.
    """

    def __init__(self, d_model: int, n_experts: int, scaled: bool = True):
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.expert_embeddings = nn.Parameter(torch.randn(n_experts, d_model) / math.sqrt(d_model))
        self.scale = 1.0 / math.sqrt(d_model) if scaled else 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, E]
        q = self.query(h)                                   # [N, d]
        return (q @ self.expert_embeddings.t()) * self.scale


def build_router(cfg: MoEConfig) -> nn.Module:
    if cfg.router == "linear":
        return LinearRouter(cfg.d_model, cfg.n_experts)
    if cfg.router == "attention":
        return AttentionRouter(cfg.d_model, cfg.n_experts, scaled=cfg.attention_scaled)
    raise ValueError(f"unknown router {cfg.router!r}")
