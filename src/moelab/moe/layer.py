"""The MoE layer: router -> normaliser -> selection (+bias) -> capacity -> dispatch -> combine."""

from __future__ import annotations

import torch
from torch import nn

from .balancing import build_balancing
from .capacity import apply_capacity
from .config import MoEConfig
from .dispatch import dispatch_combine
from .experts import EXPERTS, build_experts
from .init import InitConfig
from .normalisers import NORMALISERS, build_normaliser
from .routers import ROUTERS, build_router
from .selection import build_selection
from .stats import RoutingStats, experts_per_token_hist, max_violation, router_z_sum, routing_entropy_sum


def moe_flops_per_token(cfg: MoEConfig, experts_per_token: float | None = None) -> dict[str, float]:
    """Forward matmul FLOPs per token of one MoE layer, split into router and experts (routed + shared).
    experts_per_token: the realised number of routed experts (default: k_routed, or every routed
    expert for soft routing); the n_shared shared experts are added to it."""
    k = experts_per_token if experts_per_token is not None else float(cfg.k_routed or cfg.n_routed)
    return {
        "router": ROUTERS.get(cfg.router).flops_per_token(cfg),
        "experts": (k + cfg.n_shared) * EXPERTS.get(cfg.expert).flops_per_token(cfg),
    }


def shared_experts_config(cfg: MoEConfig) -> MoEConfig:
    """The n_shared shared experts as an expert bank of their own: same type and width as a routed one."""
    return cfg.replace(n_experts=cfg.n_shared, d_ff=cfg.expert_width, expert_granularity=1, n_shared=0)


class MoELayer(nn.Module):
    """Sparse MoE feed-forward block. forward(x [B, T, d], token_mask [B, T] bool) -> [B, T, d].

    After each forward, `balancing_loss` holds this layer's weighted balancing losses (a scalar
    tensor) and `last_stats` its RoutingStats. Padding tokens (token_mask False) are not routed, not
    computed, and not counted in losses or statistics. `last_assignment` holds the (position, expert)
    pairs of the computed slots; position indexes the flattened [B * T] input. Both are only recorded
    while `record_stats` is True (the default; training turns it off: nothing reads them there, and
    the entropy and CPU copies would sync the device every layer, every step).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.router = build_router(cfg)
        self.normaliser = build_normaliser(cfg)
        self.selection = build_selection(cfg)
        self.balancing = build_balancing(cfg)
        self.experts = build_experts(cfg)
        # always-on experts (DeepSeekMoE); a module apart, so routed-expert counts never include them
        self.shared_experts = build_experts(shared_experts_config(cfg)) if cfg.n_shared else None
        self.on_simplex = NORMALISERS.get(cfg.norm).on_simplex
        self.balancing_loss = torch.zeros(())
        self.last_stats = RoutingStats()
        self.last_assignment: tuple[torch.Tensor, torch.Tensor] | None = None
        self.record_stats = True

    def reset_parameters(self, init: InitConfig) -> None:
        self.router.reset_parameters(init)
        self.experts.reset_parameters(init)
        if self.shared_experts is not None:
            self.shared_experts.reset_parameters(init)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        # real: the flat positions of real tokens (None: all of them, and no copy in or out)
        real = None if token_mask is None else token_mask.reshape(-1).nonzero().squeeze(1)
        h = flat if real is None else flat.index_select(0, real)  # [N, d] real tokens only
        group = self._sequence_of_each_token(b, t, x.device, real)  # [N] or None

        with torch.autocast(device_type=x.device.type, enabled=False):  # routing in float32
            scores = self.router(h.float())  # [N, E]
            weights = self.normaliser(scores)  # [N, E]
        slots = self.selection(weights, self._selection_bias(), group)
        for rule in self.balancing.values():
            rule.record(slots.expert)
        kept, n_dropped = apply_capacity(slots, group, self.cfg)
        # each token's weights as a distribution over the experts, for the aux loss and the entropy:
        # themselves on the simplex; otherwise normalised over all experts (sigmoid; DeepSeek-V3)
        shares = weights if self.on_simplex else weights / weights.sum(-1, keepdim=True).clamp_min(1e-9)

        out, tokens_per_expert = dispatch_combine(
            h, kept.token, kept.expert, kept.weight, self.experts, self.cfg.n_routed
        )
        if self.shared_experts is not None:
            out = out + self._shared(h)
        self.balancing_loss = self._balancing_loss(scores, shares, slots.expert)
        if self.record_stats:
            self._record(h.shape[0], slots, kept, n_dropped, scores, shares, tokens_per_expert, real)
        if real is not None:  # out is [N, d] in x's dtype (dispatch_combine)
            out = torch.zeros_like(flat).index_copy_(0, real, out)
        return out.reshape(b, t, d)

    def _shared(self, h: torch.Tensor) -> torch.Tensor:
        """[N, d]: the sum of the shared experts' outputs (weight 1) for every token of h [N, d]."""
        n, n_shared = h.shape[0], self.cfg.n_shared
        tokens_per_expert = torch.full((n_shared,), n, dtype=torch.long, device=h.device)
        out = self.shared_experts(h.repeat(n_shared, 1), tokens_per_expert)  # [n_shared N, d], expert-major
        return out.view(n_shared, n, h.shape[1]).sum(0).to(h.dtype)

    def _selection_bias(self) -> torch.Tensor | None:
        biases = [bias for rule in self.balancing.values() if (bias := rule.selection_bias()) is not None]
        return sum(biases) if biases else None

    def update_balancing(self) -> None:
        """After each optimiser step (e.g. the aux-loss-free bias update)."""
        for rule in self.balancing.values():
            rule.update()

    def _sequence_of_each_token(self, b, t, device, real) -> torch.Tensor | None:
        """[N] which sequence each real token belongs to (capacity and expert choice are per
        sequence). None when nothing needs it."""
        if self.cfg.capacity_factor <= 0 and self.cfg.selection == "token_choice":
            return None
        group = torch.arange(b, device=device).repeat_interleave(t)
        return group if real is None else group[real]

    def _balancing_loss(self, scores, shares, selected_expert) -> torch.Tensor:
        loss = scores.new_zeros(())
        if not scores.shape[0]:
            return loss
        for rule in self.balancing.values():
            term = rule.loss(scores, shares, selected_expert)
            if term is not None:
                loss = loss + term
        return loss

    def _record(self, n_tokens, slots, kept, n_dropped, scores, shares, tokens_per_expert, real) -> None:
        self.last_stats = RoutingStats(
            tokens=float(n_tokens),
            slots_selected=float(slots.token.numel()),
            slots_dropped=float(n_dropped),
            entropy_sum=routing_entropy_sum(shares),
            batches=1.0,
            max_violation_sum=max_violation(tokens_per_expert),
            router_z_sum=router_z_sum(scores),
            tokens_per_expert=tokens_per_expert.detach().cpu(),
            experts_per_token_hist=experts_per_token_hist(kept.token, n_tokens, self.cfg.n_routed),
        )
        position = kept.token if real is None else real[kept.token]
        self.last_assignment = (position.detach(), kept.expert.detach())
