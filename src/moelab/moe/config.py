"""Configuration of one MoE layer: which router, normaliser, selection and balancing."""
from __future__ import annotations

from dataclasses import dataclass

ROUTERS = ("linear", "attention")
NORMALISERS = ("softmax", "sparsemax", "entmax15")
CAPACITY_POLICIES = ("weight", "position")
ACTIVATIONS = ("gelu", "relu", "silu")


@dataclass(frozen=True)
class MoEConfig:
    d_model: int
    d_ff: int                      # hidden width of one expert
    n_experts: int
    router: str = "linear"         # linear | attention
    norm: str = "softmax"          # softmax | sparsemax | entmax15
    top_k: int = 2                 # k >= 1: keep the k largest weights; 0: soft routing (normaliser's support)
    renormalize: bool = False      # rescale the kept weights of a token to sum to 1
    attention_scaled: bool = True  # attention router divides by sqrt(d); False reproduces SparTMoE's unscaled form
    capacity_factor: float = 0.0   # > 0: at most ceil(cf * slots / E) slots per expert per sequence; 0: dropless
    capacity_policy: str = "weight"  # which overflow slots are dropped first: lowest weight | latest position
    aux_loss_coef: float = 0.0     # Switch load-balancing loss coefficient
    z_loss_coef: float = 0.0       # router z-loss coefficient
    bias_update_rate: float = 0.0  # aux-loss-free balancing: u in b_i += u * sign(mean_load - load_i)
    activation: str = "gelu"

    def validate(self, where: str = "moe") -> None:
        """Raise ValueError naming the key, the value and what is allowed."""
        def bad(key, value, allowed):
            raise ValueError(f"{where}.{key} = {value!r} is not allowed; allowed: {allowed}")

        if self.router not in ROUTERS:
            bad("router", self.router, ", ".join(ROUTERS))
        if self.norm not in NORMALISERS:
            bad("norm", self.norm, ", ".join(NORMALISERS))
        if self.n_experts < 1:
            bad("n_experts", self.n_experts, "an integer >= 1")
        if not 0 <= self.top_k <= self.n_experts:
            bad("top_k", self.top_k, f"0 (soft routing) or 1..{self.n_experts} (the number of experts)")
        if self.capacity_factor < 0:
            bad("capacity_factor", self.capacity_factor, "0 (dropless) or a number > 0")
        if self.capacity_policy not in CAPACITY_POLICIES:
            bad("capacity_policy", self.capacity_policy, ", ".join(CAPACITY_POLICIES))
        if self.activation not in ACTIVATIONS:
            bad("activation", self.activation, ", ".join(ACTIVATIONS))
        for key in ("aux_loss_coef", "z_loss_coef", "bias_update_rate"):
            if getattr(self, key) < 0:
                bad(key, getattr(self, key), "a number >= 0")
        if self.bias_update_rate > 0 and self.top_k == 0:
            bad("bias_update_rate", self.bias_update_rate,
                "0 when top_k = 0 (the bias only changes which top-k experts are selected)")
