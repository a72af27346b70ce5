"""Expert types: E feed-forward networks stored as stacked weights, run on expert-sorted slots.

forward(x [S, d] sorted by expert, tokens_per_expert [E]) -> [S, d]. One file per expert type
(`moe.expert`); each owns its weight init and its FLOPs per token per expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry, import_all

EXPERTS = Registry("expert")
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def grouped_mm_usable(*tensors: torch.Tensor) -> bool:
    """Whether torch's grouped GEMM can run on these operands.

    F.grouped_mm runs CUTLASS kernels in bf16 on Hopper/Blackwell GPUs and a C++ loop of matmuls
    elsewhere (CPU included), with autograd on both, and without a host sync (the group ends stay
    on the device). It needs every row stride to be a multiple of 16 bytes, and under torch.compile
    bf16 operands (its meta kernel, torch 2.13, accepts no other dtype).
    """
    if not hasattr(F, "grouped_mm"):
        return False
    if torch.compiler.is_compiling() and any(t.dtype != torch.bfloat16 for t in tensors):
        return False
    return all(t.shape[-1] * t.element_size() % 16 == 0 for t in tensors)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert matmuls run in: autocast's (e.g. bf16) when it is on, else the input's.
    grouped_mm is not an autocast op, so the layer casts for it."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """x [S, a] (rows grouped by expert, group e ends at row ends[e]) @ w[e] [a, b] -> [S, b]."""
    return F.grouped_mm(x, w, offs=ends)


def build_experts(cfg):
    return EXPERTS.get(cfg.expert, "expert")(cfg)


import_all(__name__, __path__)
