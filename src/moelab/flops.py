"""Analytic forward FLOPs per token (a multiply-add counts 2), matmuls only.

Checked against torch.utils.flop_counter in tests. Norms, activations and softmaxes are
not counted (torch's flop counter does not count them either). MoE layers' router and expert
FLOPs come from the registered components (moe.moe_flops_per_token).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter

from .config import ModelConfig
from .moe import moe_flops_per_token


def decoder_flops_per_token(
    model: ModelConfig, vocab_size: int, context: int, experts_per_token: list[float] | None = None
) -> dict:
    """Forward FLOPs per token of the decoder LM / encoder classifier at sequence length `context`.

    experts_per_token: realised experts/token of each MoE block (from routing stats); default: k (or E).
    """
    d = model.d_model
    moe_blocks = model.moe_block_indices()
    ks = experts_per_token if experts_per_token is not None else [None] * len(moe_blocks)
    attention = model.n_layers * (2 * d * 3 * d + 2 * d * d + 2 * 2 * context * d)  # qkv, out, QK^T and AV (full T x T)
    dense_ffn = (model.n_layers - len(moe_blocks)) * 2 * 2 * d * model.dense_d_ff
    per_layer = [moe_flops_per_token(model.moe, k) for k in ks] if moe_blocks else []
    expert_ffn = sum(p["experts"] for p in per_layer)
    router = sum(p["router"] for p in per_layer)
    head = 2 * d * vocab_size
    total = attention + dense_ffn + expert_ffn + router + head
    return {
        "attention": attention,
        "dense_ffn": dense_ffn,
        "experts": expert_ffn,
        "router": router,
        "head": head,
        "total": total,
    }


# ------------------------------------------------------------------ counted FLOPs (the independent check)
def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of torch._grouped_mm, which torch's FlopCounterMode does not count (torch 2.13).

    Every row meets exactly one group (the layer's group ends cover all rows), so a grouped matmul
    costs what one matmul over the concatenated groups costs:
      [M, K] x [G, K, N] -> [M, N]     (forward, and the input gradient): 2 M K N
      [M, K] x [K, N]    -> [G, M, N]  (weight gradient; K split into groups): 2 M K N
      [G, M, K] x [G, K, N]            (batched): 2 G M K N
    """
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    rows = a_shape[0] * a_shape[1] if len(a_shape) == 3 else a_shape[0]
    return 2 * rows * a_shape[-1] * b_shape[-1]


def register_grouped_mm_flops() -> None:
    """Teach FlopCounterMode the grouped matmul (once; torch's own formula wins if it has one)."""
    op = torch.ops.aten._grouped_mm
    if hasattr(torch.ops.aten, "_grouped_mm") and op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_grouped_mm_flops)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's FlopCounterMode counts while fn() runs. Attention runs on the math backend, whose
    plain matmuls the counter sees on every device (the fused CPU kernel is not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    register_grouped_mm_flops()
    with sdpa_kernel(SDPBackend.MATH), flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
