"""Weight initialisation shared by every model: one rule per role, so that same shapes start alike.

Switch Transformer (Fedus et al. 2021, section 2.5): a truncated normal with mean 0 and standard
deviation sqrt(scale / fan_in), cut at two standard deviations; they lower the scale from 1.0 to 0.1
for stability. moelab applies it to every FFN weight (dense FFN, each expert, shared experts: scale
`init.ffn_scale`), to the routers (`init.router_scale`) and to the other projections (attention
q/k/v/o, classification head: `init.projection_scale`); embeddings (and the tied LM head) use a
normal of std `init.embedding_std`. Same role and shape -> same distribution, so a dense FFN and an
expert of the same width start alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InitConfig:
    ffn_scale: float = 0.1  # dense FFN, every expert, shared experts
    router_scale: float = 0.1  # router weights (projections, expert embeddings)
    projection_scale: float = 0.1  # attention q, k, v, o and the classification head
    embedding_std: float = 0.02  # token/position embeddings (and the tied LM head)


@torch.no_grad()
def switch_init_(weight: torch.Tensor, scale: float, fan_in: int) -> torch.Tensor:
    """In place: truncated normal, std = sqrt(scale / fan_in), cut at +-2 std."""
    std = math.sqrt(scale / fan_in)
    return torch.nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
