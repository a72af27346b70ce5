"""Experts stored as stacked weight tensors, run as one grouped matmul over expert-sorted slots."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

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


class GroupedExperts(nn.Module):
    """E two-layer MLPs: y = act(x W_in[e]) W_out[e]. W_in: [E, d, f], W_out: [E, f, d]."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(n_experts, d_model, d_ff) / math.sqrt(d_model))
        self.w_out = nn.Parameter(torch.randn(n_experts, d_ff, d_model) / math.sqrt(d_ff))
        self.act = ACTIVATIONS[activation]
        self.use_grouped_mm = True      # False: always the per-expert loop (the fallback; tests compare the two)

    def forward(self, x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x: [S, d] slots sorted by expert; tokens_per_expert: [E]. Returns [S, d] in the compute dtype."""
        dtype = compute_dtype(x)
        x, w_in, w_out = x.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype)
        if self.use_grouped_mm and grouped_mm_usable(x, w_in, w_out):
            ends = torch.cumsum(tokens_per_expert, 0).to(torch.int32)        # [E] end row of each expert's block
            hidden = self.act(F.grouped_mm(x, w_in, offs=ends))              # [S, f]
            return F.grouped_mm(hidden, w_out, offs=ends)                    # [S, d]
        return self._loop(x, w_in, w_out, tokens_per_expert)

    def _loop(self, x, w_in, w_out, tokens_per_expert) -> torch.Tensor:
        # One contiguous block per expert; a loop over experts, never over tokens. unbind, not w_in[e]:
        # the backward of E separate selects writes E zero-filled [E, d, f] gradients (E^2 traffic).
        w_in, w_out = w_in.unbind(0), w_out.unbind(0)
        blocks = x.split(tokens_per_expert.tolist())          # host sync: split sizes are Python ints
        outputs = [self.act(block @ w_in[e]) @ w_out[e] for e, block in enumerate(blocks) if block.shape[0]]
        return torch.cat(outputs) if outputs else x.new_zeros(0, w_out[0].shape[-1])
