"""Expert choice (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"): experts choose
tokens. Within each group (sequence) of n real tokens, every expert takes its C = ceil(k * n / E)
tokens of highest weight, k = top_k being the average number of experts per token (the paper's
capacity factor c). A slot's weight is the normaliser's token-expert weight (softmax in the paper).
Every expert computes exactly C tokens per sequence: the load is balanced by construction, while a
token may get any number of experts, none included.

Rules (OptionError at `moelab check`):
  * not causal: whether a token is picked depends on the other tokens of its sequence, later ones
    included. Refused in causal models (the LM); the summariser's decoder uses token choice with the
    same k (models/switch.stack_moe_configs), its encoder expert choice.
  * top_k >= 1 (C = 0 would compute nothing);
  * capacity_factor = 0: the rule is its own capacity (change top_k to change C);
  * bias_update_rate = 0: a selection bias balances loads that are already equal.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Component, OptionError
from . import SELECTIONS, Slots


@SELECTIONS.register("expert_choice")
class ExpertChoice(Component, nn.Module):
    not_causal_because = "each expert picks its top-C tokens of the whole sequence, later tokens included"

    @classmethod
    def is_causal(cls, cfg) -> bool:
        return False

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.top_k == 0:
            raise OptionError("top_k", cfg.top_k, "1..n_experts with expert_choice (k = average experts per token)")
        if cfg.capacity_factor > 0:
            raise OptionError(
                "capacity_factor",
                cfg.capacity_factor,
                "0 with expert_choice: it has its own capacity ceil(top_k x tokens / E) per sequence; change top_k",
            )
        if cfg.bias_update_rate > 0:
            raise OptionError(
                "bias_update_rate",
                cfg.bias_update_rate,
                "0 with expert_choice: every expert already takes exactly C tokens per sequence",
            )

    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.k_routed

    def forward(
        self, weights: torch.Tensor, selection_bias: torch.Tensor | None = None, group: torch.Tensor | None = None
    ) -> Slots:
        """weights [N, E]; group [N]: the sequence of each token, non-decreasing (the layer flattens
        [B, T] row by row), None: one sequence. Slots come out token-major."""
        n, e = weights.shape
        if group is None:
            group = torch.zeros(n, dtype=torch.long, device=weights.device)
        tokens_per_group = torch.bincount(group)  # [G]
        start = torch.cumsum(tokens_per_group, 0) - tokens_per_group  # [G] first token of each sequence
        capacity = (self.k * tokens_per_group + e - 1) // e  # [G] ceil(k n / E), exact integer arithmetic
        position = torch.arange(n, device=weights.device) - start[group]  # [N] index within its sequence
        # [G, T_max, E]: each sequence's weights, -inf where it has no token
        table = weights.new_full((len(tokens_per_group), int(tokens_per_group.max()), e), float("-inf"))
        table[group, position] = weights.detach()
        c_max = int(capacity.max())
        picked = table.topk(c_max, dim=1).indices  # [G, C_max, E]: each expert's best tokens, best first
        keep = torch.arange(c_max, device=weights.device)[None, :, None] < capacity[:, None, None]  # [G, C_max, 1]
        keep = keep.expand_as(picked)
        token = (start[:, None, None] + picked)[keep]  # [S] flat token index
        expert = torch.arange(e, device=weights.device).expand_as(picked)[keep]
        rank = torch.arange(c_max, device=weights.device)[None, :, None].expand_as(picked)[keep]  # the expert's order
        order = (token * e + expert).argsort()  # token-major, like token choice
        token, expert, rank = token[order], expert[order], rank[order]
        slots = Slots(token, expert, weights[token, expert], rank)
        return slots.keep(slots.weight != 0)  # a sparse normaliser's zero weights compute nothing
