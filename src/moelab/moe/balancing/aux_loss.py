"""Switch load-balancing loss: coef * E * sum_i f_i * P_i (Fedus et al. 2021, eq. 4)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..registry import Param, non_negative
from . import BALANCING, BalancingRule


def switch_aux_loss(weights: torch.Tensor, expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E * sum_i f_i * P_i.

    weights: [N, E] normalised router weights of real tokens; expert: [S] expert of each selected slot.
    f_i = share of selected slots that went to expert i (= count / (tokens * k) for fixed k);
    P_i = mean router weight of expert i. f carries no gradient; P does.

    Under data parallelism (torch.distributed initialised, a training forward: weights require grad)
    f and the token count are all-reduced, so the loss is that of the global batch, not of this rank's
    shard: f*P is not linear in the tokens, and a per-rank loss would make the objective depend on the
    world size. Each rank returns world * sum_i f_i * (sum of its tokens' w_i) / (global tokens) * E;
    DDP averages gradients over ranks, which yields exactly the gradient of the global-batch loss, and
    the mean of the ranks' values (what training logs) is its value. Every rank must call it in step
    (it does: every rank runs every training forward, on a non-empty shard).
    """
    slots = torch.bincount(expert, minlength=n_experts).float()
    world = dist.get_world_size() if weights.requires_grad and dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        counts = torch.cat([slots, slots.new_tensor([weights.shape[0]])])  # [E + 1]: slots per expert, tokens
        dist.all_reduce(counts)
        slots, tokens = counts[:-1], counts[-1]
        p = weights.float().sum(0) * (world / tokens.clamp_min(1.0))
    else:
        p = weights.float().mean(0)
    f = slots / slots.sum().clamp_min(1.0)
    return n_experts * (f * p).sum()


@BALANCING.register("aux_loss")
class SwitchAuxLoss(BalancingRule):
    params = {"aux_loss_coef": Param(0.01, "Switch load-balancing loss coefficient (0: off)", non_negative)}

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.aux_loss_coef > 0

    def __init__(self, cfg):
        super().__init__()
        self.coef, self.n_experts = cfg.aux_loss_coef, cfg.n_routed

    def loss(self, scores, weights, selected_expert):
        return self.coef * switch_aux_loss(weights, selected_expert, self.n_experts)
