"""SwiGLU experts (Shazeer 2020, "GLU Variants Improve Transformer"; the experts of Mixtral and OLMoE):
y = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]. W_gate and W_up are stored side by side as
w_in [E, d, 2f] (gate | up), so the two input projections are one grouped matmul; w_out [E, f, d].

Always silu-gated (the model's `activation` applies to dense FFNs and `mlp` experts). Per token and
expert: 3 matmuls of d x f, 6 d f FLOPs, 3 d f weights (an `mlp` expert of the same f: 4 d f, 2 d f).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import EXPERTS
from .grouped import GroupedFFNExperts


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """[S, 2f] (x W_gate | x W_up) -> [S, f]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@EXPERTS.register("swiglu")
class SwiGLUExperts(GroupedFFNExperts):
    in_factor = 2  # w_in [E, d, 2f]: W_gate | W_up

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """Per expert a token visits: gate and up d -> f, down f -> d."""
        return 6.0 * cfg.d_model * cfg.expert_width

    def hidden(self, projected: torch.Tensor) -> torch.Tensor:
        return swiglu(projected)
