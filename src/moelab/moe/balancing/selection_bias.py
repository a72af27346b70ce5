"""Aux-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias added to the routing
weights for *selection only*. After each optimiser step, b_i += u * sign(mean_load - load_i), then b
is mean-centred. load is counted over the selected slots since the last update and summed over
data-parallel ranks, so every rank applies the same update."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..registry import OptionError, Param, non_negative
from . import BALANCING, BalancingRule


@BALANCING.register("selection_bias")
class SelectionBias(BalancingRule):
    params = {
        "bias_update_rate": Param(
            0.0,
            "aux-loss-free balancing: u in b_i += u * sign(mean load - load_i) (0: off; top_k >= 1 only)",
            non_negative,
        )
    }

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.bias_update_rate > 0

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.bias_update_rate > 0 and cfg.top_k == 0:
            raise OptionError(
                "bias_update_rate",
                cfg.bias_update_rate,
                "0 when top_k = 0 (the bias only changes which top-k experts are selected)",
            )

    def __init__(self, cfg):
        super().__init__()
        self.rate = cfg.bias_update_rate
        self.register_buffer("bias", torch.zeros(cfg.n_routed))
        self.register_buffer("load", torch.zeros(cfg.n_routed))  # selected slots since the last update

    def selection_bias(self) -> torch.Tensor:
        return self.bias

    def record(self, selected_expert: torch.Tensor) -> None:
        if self.training:
            self.load += torch.bincount(selected_expert, minlength=self.load.numel()).to(self.load.dtype)

    @torch.no_grad()
    def update(self) -> None:
        load = self.load.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        self.bias += self.rate * torch.sign(load.mean() - load)
        self.bias -= self.bias.mean()
        self.load.zero_()
