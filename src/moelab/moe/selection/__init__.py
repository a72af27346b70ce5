"""Selection: routing weights [N, E] -> the (token, expert, weight) slots that are computed.

A slot is one token sent to one expert. Slots whose weight is exactly zero are never produced, so
no expert computes a token it has no weight for. One file per selection rule (`moe.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Registry, import_all

SELECTIONS = Registry("selection")


@dataclass
class Slots:
    token: torch.Tensor  # [S] long: which token (row of the flattened input)
    expert: torch.Tensor  # [S] long: which expert
    weight: torch.Tensor  # [S] float: the weight its output is scaled by (differentiable)
    rank: torch.Tensor  # [S] long: 0 for a token's first choice, 1 for its second, ...

    def keep(self, mask: torch.Tensor) -> Slots:
        return Slots(self.token[mask], self.expert[mask], self.weight[mask], self.rank[mask])


def nonzero_slots(token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor, rank: torch.Tensor) -> Slots:
    """Flatten [N, k] tensors row-major (token-major order) and drop zero-weight slots."""
    slots = Slots(token.reshape(-1), expert.reshape(-1), weight.reshape(-1), rank.reshape(-1))
    return slots.keep(slots.weight != 0)


def build_selection(cfg):
    return SELECTIONS.get(cfg.selection, "selection")(cfg)


import_all(__name__, __path__)
