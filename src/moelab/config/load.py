"""params.yaml -> typed, validated Params. Everything is checked here, once, before any stage does
work: an unknown key, a wrong type, a value outside its declared range or a study cell that cannot
be built raises ConfigError with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import SAFE_NAME, Allowed, Params, TaskParams


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `1e4` and `1e-3` are numbers (PyYAML's YAML 1.1 rules read them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run moelab from the project root (where params.yaml is)")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values, got {type(raw).__name__}")
    return raw or {}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and validate params.yaml (every study cell is resolved once)."""
    from .resolve import validate

    params = build_params(read_yaml(path))
    validate(params)
    return params


def build_params(raw: dict) -> Params:
    from ..tasks import TASKS

    fixed = {f.name for f in dataclasses.fields(Params)} - {"task_sections"}
    sections = {}
    for key in list(raw):
        if key in fixed:
            continue
        if key not in TASKS.classes:
            hint = difflib.get_close_matches(str(key), [*fixed, *TASKS.names()], n=1)
            raise ConfigError(
                f"params.yaml: unknown key {key!r}{_did(hint)}; allowed keys here: "
                f"{', '.join(sorted(fixed))}, and a section per task ({', '.join(TASKS.names())})"
            )
        task_cls = TASKS.classes[key]
        schema = dataclasses.make_dataclass(
            f"{key}_params",
            [
                ("data", task_cls.data_params),
                ("models", dict[str, _preset_type()]),
                ("train", _train_type()),
                ("evaluate", task_cls.eval_params, dataclasses.field(default_factory=task_cls.eval_params)),
            ],
        )
        built = build(schema, raw[key], key)
        sections[key] = TaskParams(built.data, built.models, built.train, built.evaluate)
    params = build(Params, {k: v for k, v in raw.items() if k in fixed}, "")
    return dataclasses.replace(params, task_sections=sections)


def _preset_type():
    from .schema import ModelPreset

    return ModelPreset


def _train_type():
    from .schema import TrainConfig

    return TrainConfig


def _did(hint: list[str]) -> str:
    return f" (did you mean {hint[0]!r}?)" if hint else ""


# ---------------------------------------------------------------- typed building
def build(cls, data, path: str):
    """Build dataclass `cls` from a dict: unknown, missing and wrongly typed keys and values
    outside a field's declared range raise ConfigError naming the key."""
    where = path or "params.yaml (top level)"
    if not isinstance(data, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "task_sections"}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            raise ConfigError(
                f"params.yaml: unknown key {_join(path, key)!r}{_did(hint)}; allowed keys here: {', '.join(fields)}"
            )
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key, f.metadata.get("item_allowed"))
            _check_range(f.metadata.get("allowed"), values[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params.yaml: missing key {key!r}")
    return cls(**values)


def _check_range(rule: Allowed | None, value, key: str) -> None:
    if rule is None or value is None:
        return
    problem = rule.problem(value)
    if problem:
        raise ConfigError(f"params.yaml: {key} = {value!r} is not allowed; allowed: {problem}")


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(tp, value, path: str, item_rule: Allowed | None = None):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is dict:
        _, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: {path} must be a mapping, got {value!r}")
        return {k: _convert(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"params.yaml: {path} = {value!r} is not allowed; allowed: a non-empty list")
        items = [_convert(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        for i, item in enumerate(items):
            _check_range(item_rule, item, f"{path}[{i}]")
        return items
    return _scalar(tp, value, path)


def _scalar(tp, value, path: str):
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"params.yaml: {path} = {value!r} has the wrong type; allowed: {tp.__name__}")
    return float(value) if tp is float else value


def check_name(key: str, value: str) -> None:
    """Names that become paths and shell words: letters, digits, '.', '_', '-' (no spaces, ';', '$'...)."""
    if not isinstance(value, str) or not re.match(SAFE_NAME, value):
        raise ConfigError(
            f"params.yaml: {key} = {value!r} is not allowed; allowed: a name of letters, digits, "
            "'.', '_' and '-' that starts with a letter or digit"
        )
