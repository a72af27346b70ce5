"""Routing statistics, accumulated as sums over batches so they can be merged and all-reduced."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RoutingStats:
    tokens: float = 0.0  # real (non-padding) tokens routed
    slots_selected: float = 0.0  # token->expert slots chosen by selection
    slots_dropped: float = 0.0  # of those, dropped by expert capacity
    entropy_sum: float = 0.0  # sum over tokens of -sum_i p_i log p_i of the router weights
    batches: float = 0.0  # forward passes summed here
    max_violation_sum: float = 0.0  # sum over forward passes of MaxVio (see max_violation)
    router_z_sum: float = 0.0  # sum over tokens of logsumexp(router scores)^2 (the z-loss term)
    tokens_per_expert: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [E] computed slots
    # [k_max + 1]: entry j = number of tokens computed by exactly j experts (after capacity drops)
    experts_per_token_hist: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __iadd__(self, other: RoutingStats) -> RoutingStats:
        for name in (
            "tokens",
            "slots_selected",
            "slots_dropped",
            "entropy_sum",
            "batches",
            "max_violation_sum",
            "router_z_sum",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if self.tokens_per_expert.numel() == 0:
            self.tokens_per_expert = other.tokens_per_expert.clone()
        else:
            self.tokens_per_expert = self.tokens_per_expert + other.tokens_per_expert
        self.experts_per_token_hist = _add_padded(self.experts_per_token_hist, other.experts_per_token_hist)
        return self

    def summary(self) -> dict:
        load = self.tokens_per_expert.double()
        mean = load.mean().item() if load.numel() else 0.0
        cv = (load.std(unbiased=False).item() / mean) if mean > 0 else 0.0
        tokens = max(self.tokens, 1.0)
        return {
            "tokens": self.tokens,
            "tokens_per_expert": [int(v) for v in load.tolist()],
            "expert_share": [v / max(load.sum().item(), 1.0) for v in load.tolist()],
            "load_cv": cv,
            "max_violation": self.max_violation_sum / max(self.batches, 1.0),
            "router_z": self.router_z_sum / tokens,
            "routing_entropy": self.entropy_sum / tokens,
            "dropped_fraction": self.slots_dropped / max(self.slots_selected, 1.0),
            "experts_per_token": (self.slots_selected - self.slots_dropped) / tokens,
            "experts_per_token_hist": [int(v) for v in self.experts_per_token_hist.tolist()],
        }


def max_violation(tokens_per_expert: torch.Tensor) -> float:
    """MaxVio of one batch (Wang et al. 2024): max_i load_i / mean load - 1 (0 when perfectly balanced)."""
    load = tokens_per_expert.double()
    mean = load.mean().item() if load.numel() else 0.0
    return load.max().item() / mean - 1.0 if mean > 0 else 0.0


def experts_per_token_hist(kept_token: torch.Tensor, n_tokens: int, n_experts: int) -> torch.Tensor:
    """[n_experts + 1] counts of tokens by how many kept slots (experts) they got (on the CPU)."""
    per_token = torch.bincount(kept_token.detach(), minlength=n_tokens)
    return torch.bincount(per_token, minlength=n_experts + 1).cpu()


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b for 1-d count vectors of possibly different lengths (the shorter is zero-padded)."""
    if a.numel() < b.numel():
        a, b = b, a
    out = a.clone()
    out[: b.numel()] += b.to(out.dtype)
    return out


def router_z_sum(scores: torch.Tensor) -> float:
    """sum over tokens of logsumexp(scores)^2: how large the router logits are (ST-MoE's z-loss, summed)."""
    return float(torch.logsumexp(scores.detach().float(), dim=-1).pow(2).sum())


def routing_entropy_sum(weights: torch.Tensor) -> float:
    """sum over tokens of the entropy of each token's weights [N, E] (0 log 0 = 0)."""
    w = weights.detach().float()
    return float(-(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum())
