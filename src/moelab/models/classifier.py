"""Encoder classifier: bidirectional blocks with MoE FFNs, mean pooling over real tokens, linear head."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..config import RunConfig
from .blocks import Block, MoEModelMixin, build_ffns
from .lm import _init


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: [B, T, d], mask: [B, T] bool -> mean over the True positions [B, d]."""
    m = mask.unsqueeze(-1).to(x.dtype)                       # [B, T, 1]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class EncoderClassifier(nn.Module, MoEModelMixin):
    """batch: input_ids [B, T], attention_mask [B, T] (1 = real token), labels [B]."""

    def __init__(self, vocab_size: int, max_len: int, n_classes: int, run: RunConfig):
        super().__init__()
        p = run.preset
        self.tok_emb = nn.Embedding(vocab_size, p.d_model)
        self.pos_emb = nn.Embedding(max_len, p.d_model)
        ffns = build_ffns(p.n_layers, p.d_model, run.dense_d_ff, p.activation, run.moe, p.moe_every)
        self.blocks = nn.ModuleList(Block(p.d_model, p.n_heads, p.dropout, False, f) for f in ffns)
        self.ln_f = nn.LayerNorm(p.d_model)
        self.head = nn.Linear(p.d_model, n_classes)
        self.apply(_init)

    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """ids [B, T], token_mask [B, T] bool -> class logits [B, C]. Padding is never attended to,
        routed or pooled, so it cannot change the logits."""
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1], device=ids.device))  # [B, T, d]
        for block in self.blocks:
            x = block(x, token_mask)
        return self.head(masked_mean(self.ln_f(x), token_mask))

    def loss(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy of the class logits; info["tokens"] = examples (the loss's weight)."""
        logits = (forward or self)(batch["input_ids"], batch["attention_mask"].bool())
        return F.cross_entropy(logits.float(), batch["labels"]), {"tokens": int(batch["labels"].numel())}
