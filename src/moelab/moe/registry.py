"""Registries: every router, normaliser, selection rule, balancing rule, capacity policy and expert
type is a class that registers its own name, declares its params (with defaults and allowed values),
validates them and owns its FLOPs formula. Config validation, `moelab check`, the FLOP counter, the
benchmark and the report read the registries; no other list of names exists.

Adding a component = one class in one file of the right package (its module is imported by the
package's __init__), decorated with `@REGISTRY.register("name")`.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import did_you_mean


class OptionError(ValueError):
    """A bad MoE option: `key` names the option (or core field), the message says what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r} is not allowed; allowed: {allowed}")


# ---------------------------------------------------------------- params a component declares
@dataclass(frozen=True)
class Param:
    """One option of the `moe:` section (and of a gate preset): default, meaning, allowed values."""

    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns what is allowed when the value is bad

    def validate(self, key: str, value: Any) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise OptionError(key, value, f"a {kind.__name__}")
        problem = self.check(value) if self.check else None
        if problem:
            raise OptionError(key, value, problem)
        return value


def non_negative(value) -> str | None:
    return None if math.isfinite(value) and value >= 0 else "a finite number >= 0"


def positive_int(value) -> str | None:
    return None if value >= 1 else "an integer >= 1"


def non_negative_int(value) -> str | None:
    return None if value >= 0 else "an integer >= 0"


def one_of(registry: Registry) -> Callable[[Any], str | None]:
    return lambda value: None if value in registry.classes else registry.allowed(value)


# ---------------------------------------------------------------- the registry
class Component:
    """Mixin of registered classes: its name, params, causality and FLOPs."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    not_causal_because: ClassVar[str] = "a token's output would depend on later tokens"

    @classmethod
    def check(cls, cfg) -> None:
        """Cross-field rules (raise OptionError). Per-value checks live in `params`."""

    @classmethod
    def is_causal(cls, cfg) -> bool:
        """Whether a token's routing and output depend only on itself and earlier tokens."""
        return True

    @classmethod
    def flops_per_token(cls, cfg) -> float:
        """Forward matmul FLOPs per token (a multiply-add counts 2) this component adds."""
        return 0.0


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.classes: dict[str, type] = {}

    def register(self, name: str):
        def add(cls):
            if name in self.classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self.classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self.classes)

    def allowed(self, value) -> str:
        hint = did_you_mean(value, self.names()).strip()
        return (f"{hint} " if hint else "") + ", ".join(self.names())

    def get(self, name: str, key: str | None = None) -> type:
        if name not in self.classes:
            raise OptionError(key or self.kind, name, self.allowed(name))
        return self.classes[name]

    def params(self) -> dict[str, Param]:
        out: dict[str, Param] = {}
        for cls in self.classes.values():
            out.update(cls.params)
        return out


def import_all(package_name: str, package_path) -> None:
    """Import every module of a package, so that each registers its components."""
    for module in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{module.name}")
