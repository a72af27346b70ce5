"""Expert capacity: each expert takes at most C slots per group (sequence); the rest are dropped.

A dropped slot contributes nothing, so a token whose every slot is dropped passes through the
block's residual connection unchanged. Which slots are dropped first is the capacity policy
(`moe.capacity_policy`), one class each below.

Non-causal layers (encoders, classifiers): C = ceil(capacity_factor * slots in the group / E).
Causal layers (decoders): a token's routing may depend only on itself and earlier tokens, so
  * C = ceil(capacity_factor * group_len * k / E) with the model's fixed sequence length group_len,
    not the slots actually present (which would count later tokens), and
  * the policy must fill capacity in token order (earlier tokens first, each token's k choices kept
    or dropped without looking ahead): `token_order`, or `position` with top-1 (the same thing).
Then training, perplexity and step-by-step generation route every prefix identically.
"""

from __future__ import annotations

import math

import torch

from .registry import Component, OptionError, Registry
from .selection import Slots

CAPACITY_POLICIES = Registry("capacity_policy")


def rank_within_bucket(bucket: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """For each slot, how many slots of the same bucket come before it by ascending `priority`."""
    by_priority = priority.argsort(stable=True)
    order = by_priority[bucket[by_priority].argsort(stable=True)]  # sorted by (bucket, priority)
    sorted_bucket = bucket[order]
    counts = torch.bincount(sorted_bucket)
    starts = torch.cumsum(counts, 0) - counts  # first index of each bucket
    rank_sorted = torch.arange(len(order), device=bucket.device) - starts[sorted_bucket]
    ranks = torch.empty_like(rank_sorted)
    ranks[order] = rank_sorted
    return ranks


class CapacityPolicy(Component):
    @staticmethod
    def priority(slots: Slots) -> torch.Tensor:
        """[S] lower = kept first."""
        raise NotImplementedError


@CAPACITY_POLICIES.register("weight")
class ByWeight(CapacityPolicy):
    """The slot with the lowest router weight is dropped first (non-causal: later tokens compete)."""

    @staticmethod
    def priority(slots: Slots) -> torch.Tensor:
        return -slots.weight.detach().float()

    @classmethod
    def is_causal(cls, cfg) -> bool:
        return False


@CAPACITY_POLICIES.register("position")
class ByPosition(CapacityPolicy):
    """Switch / GShard: every token's first choice before any second choice, earlier tokens first.
    Causal only with top-1 (a token's second choice would otherwise wait for later first choices)."""

    @staticmethod
    def priority(slots: Slots) -> torch.Tensor:
        n = slots.token.max() + 1 if slots.token.numel() else 1
        return (slots.rank * n + slots.token).float()

    @classmethod
    def is_causal(cls, cfg) -> bool:
        return cfg.k_routed == 1


@CAPACITY_POLICIES.register("token_order")
class ByTokenOrder(CapacityPolicy):
    """Earlier tokens first; a token's choices in its order of preference. Causal."""

    @staticmethod
    def priority(slots: Slots) -> torch.Tensor:
        k = int(slots.rank.max()) + 1 if slots.rank.numel() else 1
        return (slots.token * k + slots.rank).double()


def check_capacity(cfg) -> None:
    """Refuse capacity settings a causal layer cannot honour (called by MoEConfig.validate)."""
    if cfg.capacity_factor <= 0 or not cfg.causal:
        return
    policy = CAPACITY_POLICIES.get(cfg.capacity_policy, "capacity_policy")
    if cfg.top_k == 0:
        raise OptionError(
            "capacity_factor",
            cfg.capacity_factor,
            "0 for soft routing (top_k = 0) in a causal model: the slots per sequence would depend "
            "on later tokens; use top_k >= 1 or capacity_factor: 0",
        )
    if not policy.is_causal(cfg):
        raise OptionError(
            "capacity_policy",
            cfg.capacity_policy,
            "token_order (or position with top_k = 1) in a causal model: with "
            f"'{cfg.capacity_policy}' which slot is dropped depends on later tokens",
        )


def apply_capacity(slots: Slots, group: torch.Tensor | None, cfg) -> tuple[Slots, int]:
    """Drop overflow slots. group: [N] group (sequence) id of each token, None when dropless.
    Returns the kept slots and how many were dropped."""
    if cfg.capacity_factor <= 0 or slots.token.numel() == 0:
        return slots, 0
    n_experts = cfg.n_routed
    slot_group = group[slots.token]  # [S]
    n_groups = int(group.max()) + 1
    if cfg.causal:  # fixed: never counts the slots of later tokens
        c = math.ceil(cfg.capacity_factor * cfg.group_len * cfg.k_routed / n_experts)
        capacity = torch.full((n_groups,), c, dtype=torch.long, device=group.device)
    else:
        slots_per_group = torch.bincount(slot_group, minlength=n_groups)  # [G]
        capacity = torch.ceil(cfg.capacity_factor * slots_per_group.float() / n_experts).long()  # [G]
    policy = CAPACITY_POLICIES.get(cfg.capacity_policy, "capacity_policy")
    bucket = slot_group * n_experts + slots.expert
    keep = rank_within_bucket(bucket, policy.priority(slots)) < capacity[slot_group]
    return slots.keep(keep), int((~keep).sum())
