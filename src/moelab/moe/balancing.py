"""Load balancing: Switch auxiliary loss, router z-loss, and aux-loss-free selection bias."""
from __future__ import annotations

import torch
from torch import nn
import torch.distributed as dist


def switch_aux_loss(weights: torch.Tensor, expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E * sum_i f_i * P_i (Fedus et al. 2021, eq. 4).

    weights: [N, E] normalised router weights of real tokens; expert: [S] expert of each selected slot.
    f_i = share of selected slots that went to expert i (= count / (tokens * k) for fixed k);
    P_i = mean router weight of expert i. f carries no gradient; P does.

    Under data parallelism (torch.distributed initialised, a training forward: weights require grad)
    f and the token count are all-reduced, so the loss is that of the global batch, not of this rank's
    shard: f*P is not linear in the tokens, and a per-rank loss would make the objective depend on the
    world size. Each rank returns world * sum_i f_i * (sum of its tokens' w_i) / (global tokens) * E;
    DDP averages gradients over ranks, which yields exactly the gradient of the global-batch loss, and
    the mean of the ranks' values (what train.py logs) is its value. Every rank must call it in step
    (it does: every rank runs every training forward, on a non-empty shard).
    """
    slots = torch.bincount(expert, minlength=n_experts).float()
    world = dist.get_world_size() if weights.requires_grad and dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        counts = torch.cat([slots, slots.new_tensor([weights.shape[0]])])   # [E + 1]: slots per expert, tokens
        dist.all_reduce(counts)
        slots, tokens = counts[:-1], counts[-1]
        p = weights.float().sum(0) * (world / tokens.clamp_min(1.0))
    else:
        p = weights.float().mean(0)
    f = slots / slots.sum().clamp_min(1.0)
    return n_experts * (f * p).sum()


def router_z_loss(scores: torch.Tensor) -> torch.Tensor:
    """mean over tokens of logsumexp(scores)^2 (Zoph et al. 2022, ST-MoE)."""
    return torch.logsumexp(scores.float(), dim=-1).pow(2).mean()


class SelectionBias(nn.Module):
    """Aux-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias added to the
    routing weights for *selection only*. After each optimiser step, b_i += u * sign(mean_load - load_i),
    then b is mean-centred. load is counted over the selected slots since the last update and summed
    over data-parallel ranks, so every rank applies the same update.
    """

    def __init__(self, n_experts: int, rate: float):
        super().__init__()
        self.rate = rate
        self.register_buffer("bias", torch.zeros(n_experts))
        self.register_buffer("load", torch.zeros(n_experts))   # selected slots since the last update

    def record(self, expert: torch.Tensor) -> None:
        if self.training and self.rate > 0:
            self.load += torch.bincount(expert, minlength=self.load.numel()).to(self.load.dtype)

    @torch.no_grad()
    def update(self) -> None:
        if self.rate <= 0:
            return
        load = self.load.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        self.bias += self.rate * torch.sign(load.mean() - load)
        self.bias -= self.bias.mean()
        self.load.zero_()
