"""Analytic forward FLOPs per token (a multiply-add counts 2), matmuls only.

Checked against torch.utils.flop_counter in tests. Norms, activations and softmaxes are
not counted (torch's flop counter does not count them either).
"""
from __future__ import annotations

from .config import RunConfig


def moe_block_indices(run: RunConfig) -> list[int]:
    p = run.preset
    if run.moe is None or p.moe_every <= 0:
        return []
    return [i for i in range(p.n_layers) if (i + 1) % p.moe_every == 0]


def expected_experts_per_token(run: RunConfig) -> float:
    """Experts each token computes before capacity drops: k, or all E for soft routing
    (an upper bound for sparsemax/entmax, whose realised support is measured instead)."""
    return float(run.moe.top_k or run.moe.n_experts)


def decoder_flops_per_token(run: RunConfig, vocab_size: int, context: int,
                            experts_per_token: list[float] | None = None) -> dict:
    """Forward FLOPs per token of the decoder LM / encoder classifier at sequence length `context`.

    experts_per_token: realised experts/token of each MoE block (from routing stats); default: k (or E).
    """
    p, d = run.preset, run.preset.d_model
    moe_blocks = moe_block_indices(run)
    if experts_per_token is None and moe_blocks:
        experts_per_token = [expected_experts_per_token(run)] * len(moe_blocks)
    attention = p.n_layers * (2 * d * 3 * d + 2 * d * d + 2 * 2 * context * d)  # qkv, out, QK^T and AV (full T x T)
    dense_ffn = (p.n_layers - len(moe_blocks)) * 2 * 2 * d * run.dense_d_ff
    expert_ffn = sum(k * 2 * 2 * d * p.d_ff for k in experts_per_token or [])
    router = 0
    if moe_blocks:
        per_router = 2 * d * run.moe.n_experts + (2 * d * d if run.moe.router == "attention" else 0)
        router = len(moe_blocks) * per_router
    head = 2 * d * vocab_size
    total = attention + dense_ffn + expert_ffn + router + head
    return {"attention": attention, "ffn": dense_ffn + expert_ffn, "router": router, "head": head, "total": total}
