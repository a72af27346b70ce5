"""Expert capacity: each expert takes at most C slots per group (sequence); the rest are dropped.

C = ceil(capacity_factor * slots_in_group / n_experts). A dropped slot contributes nothing, so a
token whose every slot is dropped passes through the block's residual connection unchanged.
"""
from __future__ import annotations

import math

import torch

from .selection import Slots


def rank_within_bucket(bucket: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """For each slot, how many slots of the same bucket come before it by ascending `priority`."""
    by_priority = priority.argsort(stable=True)
    order = by_priority[bucket[by_priority].argsort(stable=True)]   # sorted by (bucket, priority)
    sorted_bucket = bucket[order]
    counts = torch.bincount(sorted_bucket)
    starts = torch.cumsum(counts, 0) - counts                          # first index of each bucket
    rank_sorted = torch.arange(len(order), device=bucket.device) - starts[sorted_bucket]
    ranks = torch.empty_like(rank_sorted)
    ranks[order] = rank_sorted
    return ranks


def apply_capacity(slots: Slots, group: torch.Tensor | None, n_experts: int, capacity_factor: float,
                   policy: str) -> tuple[Slots, int]:
    """Drop overflow slots. group: [N] group id of each token (None when dropless). Returns kept slots and #dropped."""
    if capacity_factor <= 0 or slots.token.numel() == 0:
        return slots, 0
    slot_group = group[slots.token]                                    # [S]
    n_groups = int(group.max()) + 1
    slots_per_group = torch.bincount(slot_group, minlength=n_groups)   # [G]
    capacity = torch.ceil(capacity_factor * slots_per_group.float() / n_experts).long()  # [G]
    if policy == "weight":      # highest weight keeps its place first
        priority = -slots.weight.detach().float()
    else:                       # "position": first choices before second choices, earlier tokens first (Switch/GShard)
        priority = (slots.rank * (slots.token.max() + 1) + slots.token).float()
    bucket = slot_group * n_experts + slots.expert
    keep = rank_within_bucket(bucket, priority) < capacity[slot_group]
    return slots.keep(keep), int((~keep).sum())
