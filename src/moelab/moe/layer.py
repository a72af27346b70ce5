"""The MoE layer: router -> normaliser -> selection (+bias) -> capacity -> dispatch -> combine."""
from __future__ import annotations

import torch
from torch import nn

from .balancing import SelectionBias, router_z_loss, switch_aux_loss
from .capacity import apply_capacity
from .config import MoEConfig
from .dispatch import dispatch_combine
from .experts import GroupedExperts
from .normalisers import build_normaliser
from .routers import build_router
from .selection import build_selection
from .stats import RoutingStats, experts_per_token_hist, routing_entropy_sum


class MoELayer(nn.Module):
    """Sparse MoE feed-forward block. forward(x [B, T, d], token_mask [B, T] bool) -> [B, T, d].

    After each forward, `balancing_loss` holds this layer's weighted aux + z loss (a scalar tensor)
    and `last_stats` its RoutingStats. Padding tokens (token_mask False) are not routed, not
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
        self.normaliser = build_normaliser(cfg.norm)
        self.selection = build_selection(cfg.top_k, cfg.renormalize)
        self.selection_bias = SelectionBias(cfg.n_experts, cfg.bias_update_rate)
        self.experts = GroupedExperts(cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)
        self.balancing_loss = torch.zeros(())
        self.last_stats = RoutingStats()
        self.last_assignment: tuple[torch.Tensor, torch.Tensor] | None = None
        self.record_stats = True

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        # real: the flat positions of real tokens (None: all of them, and no copy in or out)
        real = None if token_mask is None else token_mask.reshape(-1).nonzero().squeeze(1)
        h = flat if real is None else flat.index_select(0, real)           # [N, d] real tokens only

        with torch.autocast(device_type=x.device.type, enabled=False):     # routing in float32
            scores = self.router(h.float())                                  # [N, E]
            weights = self.normaliser(scores)                                # [N, E]
        bias = self.selection_bias.bias if self.cfg.bias_update_rate > 0 else None
        slots = self.selection(weights, bias)
        self.selection_bias.record(slots.expert)
        n_selected = slots.token.numel()
        kept, n_dropped = apply_capacity(slots, self._sequence_of_each_token(b, t, x.device, real),
                                         self.cfg.n_experts, self.cfg.capacity_factor, self.cfg.capacity_policy)

        out, tokens_per_expert = dispatch_combine(h, kept.token, kept.expert, kept.weight,
                                                  self.experts, self.cfg.n_experts)
        self.balancing_loss = self._balancing_loss(scores, weights, slots.expert)
        if self.record_stats:
            self.last_stats = RoutingStats(float(h.shape[0]), float(n_selected), float(n_dropped),
                                           routing_entropy_sum(weights), tokens_per_expert.detach().cpu(),
                                           experts_per_token_hist(kept.token, h.shape[0], self.cfg.n_experts))
            position = kept.token if real is None else real[kept.token]
            self.last_assignment = (position.detach(), kept.expert.detach())
        if real is not None:                                 # out is [N, d] in x's dtype (dispatch_combine)
            out = torch.zeros_like(flat).index_copy_(0, real, out)
        return out.reshape(b, t, d)

    def _sequence_of_each_token(self, b, t, device, real) -> torch.Tensor | None:
        """[N] which sequence each real token belongs to: capacity is per sequence. None when dropless."""
        if self.cfg.capacity_factor <= 0:
            return None
        group = torch.arange(b, device=device).repeat_interleave(t)
        return group if real is None else group[real]

    def _balancing_loss(self, scores, weights, selected_expert) -> torch.Tensor:
        loss = scores.new_zeros(())
        if self.cfg.aux_loss_coef > 0 and scores.shape[0]:
            loss = loss + self.cfg.aux_loss_coef * switch_aux_loss(weights, selected_expert, self.cfg.n_experts)
        if self.cfg.z_loss_coef > 0 and scores.shape[0]:
            loss = loss + self.cfg.z_loss_coef * router_z_loss(scores)
        return loss
