"""Text classifier: a bidirectional MoE encoder, mean pooling over real tokens, a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..moe.init import switch_init_
from .blocks import MoEModelMixin, apply_init, build_blocks


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: [B, T, d], mask: [B, T] bool -> mean over the True positions [B, d]."""
    m = mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class EncoderClassifier(nn.Module, MoEModelMixin):
    """batch: input_ids [B, T], attention_mask [B, T] (1 = real token), labels [B]."""

    def __init__(self, vocab_size: int, max_len: int, n_classes: int, model: ModelConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, model.d_model)
        self.pos_emb = nn.Embedding(max_len, model.d_model)
        self.blocks = build_blocks(model, model.moe, causal=False)
        self.ln_f = nn.LayerNorm(model.d_model)
        self.head = nn.Linear(model.d_model, n_classes)
        apply_init(self, model.init)
        switch_init_(self.head.weight, model.init.projection_scale, model.d_model)
        nn.init.zeros_(self.head.bias)

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
