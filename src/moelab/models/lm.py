"""Decoder-only language model (nanoGPT-shaped) with MoE FFNs. Causal everywhere: attention, and
routing (the MoE layers get a causal config, see moe/capacity.py), in training, evaluation and
generation alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..moe import MoEConfig
from .blocks import MoEModelMixin, apply_init, build_blocks

IGNORE = -100  # target id excluded from the loss (padding)


def causal_moe(model: ModelConfig, max_len: int) -> MoEConfig | None:
    """The MoE config of a decoder's layers: causal, capacity from the fixed context length."""
    return model.moe.replace(causal=True, group_len=max_len) if model.moe is not None else None


class DecoderLM(nn.Module, MoEModelMixin):
    def __init__(self, vocab_size: int, max_len: int, model: ModelConfig):
        super().__init__()
        self.max_len = max_len
        self.tok_emb = nn.Embedding(vocab_size, model.d_model)
        self.pos_emb = nn.Embedding(max_len, model.d_model)
        self.blocks = build_blocks(model, causal_moe(model, max_len), causal=True)
        self.ln_f = nn.LayerNorm(model.d_model)
        self.head = nn.Linear(model.d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied embeddings
        apply_init(self, model.init)

    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: [B, T] -> logits [B, T, V]. Position t sees positions <= t only."""
        t = ids.shape[1]
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x, token_mask)
        return self.head(self.ln_f(x))

    def loss(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict]:
        """Mean next-token cross-entropy over non-padding targets (IGNORE marks padding).

        batch: input_ids [B, T], targets [B, T]. `forward`: the callable to run (a DDP wrapper), default self.
        """
        ids, targets = batch["input_ids"], batch["targets"]
        logits = (forward or self)(ids, targets != IGNORE)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
        n = int((targets != IGNORE).sum())
        return ce, {"tokens": n}

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        new_tokens: int,
        temperature: float = 1.0,
        sampling_top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Each step re-runs the whole (at most max_len) prefix, so every position is routed exactly as
        in training and perplexity (no cache that would route a token alone)."""
        for _ in range(new_tokens):
            logits = self.forward(ids[:, -self.max_len :])[:, -1].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(filter_logits(logits / temperature, sampling_top_k, top_p), -1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, nxt], 1)
        return ids


def filter_logits(logits: torch.Tensor, sampling_top_k: int, top_p: float) -> torch.Tensor:
    """Keep the sampling_top_k most likely tokens, then the smallest set whose probability reaches top_p."""
    if sampling_top_k > 0:
        kth = logits.topk(min(sampling_top_k, logits.shape[-1]), -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is complete
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits
