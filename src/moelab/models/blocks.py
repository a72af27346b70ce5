"""Transformer building blocks shared by the decoder LM and the encoder classifier."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..moe import MoELayer, MoEConfig
from ..moe.experts import ACTIVATIONS


class DenseFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        self.w_in = nn.Linear(d_model, d_ff, bias=False)
        self.w_out = nn.Linear(d_ff, d_model, bias=False)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.w_out(self.act(self.w_in(x)))


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, dh]
        attn_mask = None
        if token_mask is not None and not self.causal:
            attn_mask = token_mask[:, None, None, :]          # keys that are padding get no attention
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + ffn(LN(x)); the FFN is dense or MoE."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, ffn: nn.Module):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, causal)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = ffn
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), token_mask))
        return x + self.drop(self.ffn(self.ln_ffn(x), token_mask))


def build_ffns(n_layers: int, d_model: int, dense_d_ff: int, activation: str,
               moe: MoEConfig | None, moe_every: int) -> list[nn.Module]:
    """MoE FFN in every moe_every-th block (blocks moe_every-1, 2*moe_every-1, ...), dense elsewhere."""
    ffns = []
    for i in range(n_layers):
        use_moe = moe is not None and moe_every > 0 and (i + 1) % moe_every == 0
        ffns.append(MoELayer(moe) if use_moe else DenseFFN(d_model, dense_d_ff, activation))
    return ffns


class MoEModelMixin:
    """Shared by every model: find MoE layers, sum their balancing losses once, update biases."""

    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def balancing_loss(self) -> torch.Tensor:
        layers = self.moe_layers()
        return sum((l.balancing_loss for l in layers), torch.zeros(()))

    def record_routing_stats(self, on: bool) -> None:
        for layer in self.moe_layers():
            layer.record_stats = on

    def update_selection_bias(self) -> None:
        for layer in self.moe_layers():
            layer.selection_bias.update()
