"""Configuration of one MoE layer: sizes, router, normaliser, k, and the options every registered
component declares (the `moe:` section of params.yaml, overridable per gate preset).

`MoEConfig.options` holds every option with its default filled in; `cfg.<option>` reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import did_you_mean
from .balancing import BALANCING
from .capacity import CAPACITY_POLICIES, check_capacity
from .experts import ACTIVATIONS, EXPERTS
from .normalisers import NORMALISERS
from .registry import OptionError, Param, non_negative, non_negative_int, one_of, positive_int
from .routers import ROUTERS
from .selection import SELECTIONS

# options of the layer itself (which component of a kind to use, and capacity)
LAYER_PARAMS = {
    "selection": Param(
        "token_choice",
        "who chooses: token_choice (each token its top-k) or another registered selection rule",
        one_of(SELECTIONS),
    ),
    "expert": Param("mlp", "expert type", one_of(EXPERTS)),
    "capacity_factor": Param(
        0.0, "0: dropless; > 0: at most ceil(cf * slots / E) slots per expert per sequence", non_negative
    ),
    "capacity_policy": Param("weight", "which overflow slots are dropped first", one_of(CAPACITY_POLICIES)),
    # DeepSeekMoE (Dai et al. 2024) / OLMoE: same active FLOPs as top_k experts of width d_ff
    "expert_granularity": Param(
        1, "m: each expert split into m of width d_ff / m; a token takes m x top_k - n_shared routed ones", positive_int
    ),
    "n_shared": Param(
        0, "shared experts (width d_ff / m): every token, weight 1, in place of routed ones", non_negative_int
    ),
}
REGISTRIES = (ROUTERS, NORMALISERS, SELECTIONS, BALANCING, CAPACITY_POLICIES, EXPERTS)


def all_params() -> dict[str, Param]:
    """Every MoE option: the layer's own and each registered component's (names are unique)."""
    out = dict(LAYER_PARAMS)
    for registry in REGISTRIES:
        for key, param in registry.params().items():
            if key in out:
                raise ValueError(f"MoE option {key!r} is declared twice")
            out[key] = param
    return out


def resolve_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validate option values and fill in defaults. Raises OptionError naming the option."""
    params = all_params()
    raw = raw or {}
    for key in raw:
        if key not in params:
            raise OptionError(
                key, raw[key], f"no such MoE option{did_you_mean(key, params)}; options: {', '.join(params)}"
            )
    return {key: param.validate(key, raw[key]) if key in raw else param.default for key, param in params.items()}


@dataclass(frozen=True)
class MoEConfig:
    d_model: int
    d_ff: int  # hidden width of one expert
    n_experts: int
    router: str = "linear"
    norm: str = "softmax"
    top_k: int = 2  # k >= 1: keep the k largest weights; 0: soft routing (normaliser's support)
    activation: str = "gelu"
    causal: bool = False  # set by the model: a decoder's layers never look at later tokens
    group_len: int = 0  # causal layers: the fixed sequence length capacity is computed from
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", resolve_options(self.options))

    def __getattr__(self, name: str):
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"MoEConfig has no field or option {name!r}")

    @classmethod
    def build(cls, **values) -> MoEConfig:
        """Fields by name, and any other keyword as an option: MoEConfig.build(d_model=8, ..., aux_loss_coef=0)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
        return cls(
            **{k: v for k, v in values.items() if k in fields},
            options={**values.get("options", {}), **{k: v for k, v in values.items() if k not in fields | {"options"}}},
        )

    def replace(self, **changes) -> MoEConfig:
        """A copy with fields and/or options changed (options by name)."""
        fields = {f.name for f in dataclasses.fields(self)}
        options = {**self.options, **{k: v for k, v in changes.items() if k not in fields}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in fields}, options=options)

    # ---------------------------------------------------------------- sizes the options derive
    # Fine-grained + shared experts (DeepSeekMoE): each of the n_experts experts of width d_ff is split
    # into m = expert_granularity experts of width d_ff / m, and n_shared of that width see every token.
    # top_k keeps counting coarse experts, so a token's active FFN compute stays that of top_k experts
    # of width d_ff (the dense baseline's): (k_routed + n_shared) x d_ff / m = top_k x d_ff.
    @property
    def n_routed(self) -> int:
        """Routed experts per layer: m x n_experts."""
        return self.n_experts * self.expert_granularity

    @property
    def expert_width(self) -> int:
        """Hidden width of one routed (or shared) expert: d_ff / m."""
        return self.d_ff // self.expert_granularity

    @property
    def k_routed(self) -> int:
        """Routed experts each token picks, m x top_k - n_shared (0: soft routing). Selection, capacity
        and FLOPs read this, not top_k."""
        return self.top_k * self.expert_granularity - self.n_shared if self.top_k else 0

    # ---------------------------------------------------------------- validation
    def components(self) -> list[type]:
        """The registered classes this layer uses (balancing rules: the enabled ones)."""
        return [
            ROUTERS.get(self.router, "router"),
            NORMALISERS.get(self.norm, "norm"),
            SELECTIONS.get(self.selection, "selection"),
            EXPERTS.get(self.expert, "expert"),
            CAPACITY_POLICIES.get(self.capacity_policy, "capacity_policy"),
            *[cls for cls in BALANCING.classes.values() if cls.enabled(self)],
        ]

    def validate(self) -> None:
        """Raise OptionError (its `key` names the field or option) for a value that is not allowed."""
        if self.n_experts < 1:
            raise OptionError("n_experts", self.n_experts, "an integer >= 1")
        if self.activation not in ACTIVATIONS:
            raise OptionError("activation", self.activation, ", ".join(ACTIVATIONS))
        if not 0 <= self.top_k <= self.n_experts:
            raise OptionError("top_k", self.top_k, f"0 (soft routing) or 1..{self.n_experts} (the number of experts)")
        if self.d_ff % self.expert_granularity:
            raise OptionError("expert_granularity", self.expert_granularity, f"a divisor of d_ff = {self.d_ff}")
        if self.top_k and self.k_routed < 1:
            raise OptionError(
                "n_shared",
                self.n_shared,
                f"< expert_granularity x top_k = {self.top_k * self.expert_granularity} "
                "(a token must keep at least one routed expert)",
            )
        for component in self.components():
            component.check(self)
        if self.causal:
            for kind, component in zip(("router", "norm", "selection", "expert"), self.components()):
                if not component.is_causal(self):
                    raise OptionError(
                        kind,
                        getattr(self, kind),
                        f"a causal {kind} in a causal model ({component.name} is not: {component.not_causal_because})",
                    )
            check_capacity(self)
