"""Transformer building blocks shared by the decoder LM and the encoder classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..moe import InitConfig, MoEConfig, MoELayer
from ..moe.experts import ACTIVATIONS
from ..moe.init import switch_init_


class DenseFFN(nn.Module):
    """act(x W_in) W_out: the dense baseline's FFN, initialised like one expert of the same width."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        self.w_in = nn.Linear(d_model, d_ff, bias=False)
        self.w_out = nn.Linear(d_ff, d_model, bias=False)
        self.act = ACTIVATIONS[activation]
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.w_in.weight, init.ffn_scale, self.w_in.in_features)
        switch_init_(self.w_out.weight, init.ffn_scale, self.w_out.in_features)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.w_out(self.act(self.w_in(x)))


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters(InitConfig())

    def reset_parameters(self, init: InitConfig) -> None:
        switch_init_(self.qkv.weight, init.projection_scale, self.qkv.in_features)
        switch_init_(self.out.weight, init.projection_scale, self.out.in_features)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, dh]
        attn_mask = None
        if token_mask is not None and not self.causal:
            attn_mask = token_mask[:, None, None, :]  # keys that are padding get no attention
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
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


def build_blocks(model, moe: MoEConfig | None, causal: bool) -> nn.ModuleList:
    """The blocks of a ModelConfig: an MoE FFN (config `moe`) in every moe_every-th block, dense elsewhere."""
    moe_blocks = set(model.moe_block_indices()) if moe is not None else set()
    ffns = [
        MoELayer(moe) if i in moe_blocks else DenseFFN(model.d_model, model.dense_d_ff, model.activation)
        for i in range(model.n_layers)
    ]
    return nn.ModuleList(Block(model.d_model, model.n_heads, model.dropout, causal, f) for f in ffns)


def apply_init(module: nn.Module, init: InitConfig) -> None:
    """One initialisation rule per role (moe/init.py) over a whole model."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=init.embedding_std)
        elif isinstance(m, (DenseFFN, SelfAttention, MoELayer)):
            m.reset_parameters(init)


class MoEModelMixin:
    """Shared by every model: find MoE layers, sum their balancing losses once, update balancing state."""

    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def balancing_loss(self) -> torch.Tensor:
        layers = self.moe_layers()
        return sum((layer.balancing_loss for layer in layers), torch.zeros(()))

    def record_routing_stats(self, on: bool) -> None:
        for layer in self.moe_layers():
            layer.record_stats = on

    def update_balancing(self) -> None:
        """After each optimiser step (aux-loss-free bias updates)."""
        for layer in self.moe_layers():
            layer.update_balancing()
