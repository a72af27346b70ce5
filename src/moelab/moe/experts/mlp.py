"""The classic expert: y = act(x W_in[e]) W_out[e], W_in: [E, d, f], W_out: [E, f, d] (Switch, GShard)."""

from __future__ import annotations

import torch

from . import ACTIVATIONS, EXPERTS
from .grouped import GroupedFFNExperts


@EXPERTS.register("mlp")
class GroupedExperts(GroupedFFNExperts):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.act = ACTIVATIONS[cfg.activation]

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """Per expert a token visits: two matmuls, d -> f -> d."""
        return 4.0 * cfg.d_model * cfg.expert_width

    def hidden(self, projected: torch.Tensor) -> torch.Tensor:
        return self.act(projected)
