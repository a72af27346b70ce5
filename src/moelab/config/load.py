"""params.yaml -> typed Params: an unknown key, a wrong type or a value outside its declared range
raises ConfigError with one line naming the key, the value and what is allowed. This module parses and
type-checks only; what needs the registries (MoE options, whether every study cell can be built) is
checked above the tasks, in moelab/resolve.py, which calls it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, did_you_mean
from .schema import SAFE_NAME, Allowed, DataParams, EvalParams, ModelPreset, Params, TaskParams, TrainConfig


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


@dataclass(frozen=True)
class TaskSchema:
    """The typed sections of one task (`<task>.data`, `<task>.evaluate`): the task declares them, the
    caller hands them to `build_params` (config imports nothing of the tasks)."""

    data: type[DataParams]
    evaluate: type[EvalParams]


def build_params(raw: dict, tasks: dict[str, TaskSchema]) -> Params:
    """Type-check params.yaml's mapping into Params: unknown keys, wrong types and values outside a
    field's declared range raise ConfigError naming the key. `tasks`: the task name -> its sections
    (a top-level key that is neither a field of Params nor a task is unknown)."""
    fixed = {f.name for f in dataclasses.fields(Params)} - {"task_sections"}
    sections = {}
    for key in list(raw):
        if key in fixed:
            continue
        if key not in tasks:
            raise ConfigError(
                f"params.yaml: unknown key {key!r}{did_you_mean(key, [*fixed, *tasks])}; allowed keys here: "
                f"{', '.join(sorted(fixed))}, and a section per task ({', '.join(tasks)})"
            )
        sections[key] = build_task_section(raw[key], key, tasks[key])
    params = build(Params, {k: v for k, v in raw.items() if k in fixed}, "")
    return dataclasses.replace(params, task_sections=sections)


def build_task_section(raw, key: str, schema: TaskSchema) -> TaskParams:
    section = dataclasses.make_dataclass(
        f"{key}_params",
        [
            ("data", schema.data),
            ("models", dict[str, ModelPreset]),
            ("train", TrainConfig),
            ("evaluate", schema.evaluate, dataclasses.field(default_factory=schema.evaluate)),
            ("pretrain", TrainConfig | None, dataclasses.field(default=None)),
        ],
    )
    built = build(section, raw, key)
    return TaskParams(built.data, built.models, built.train, built.evaluate, built.pretrain)


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
            raise ConfigError(
                f"params.yaml: unknown key {_join(path, key)!r}{did_you_mean(key, fields)}; allowed keys here: "
                f"{', '.join(fields)}"
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
