"""Typed, validated configuration read from params.yaml: schema (the sections and their allowed
ranges), load (YAML -> dataclasses, checked once at the edge), resolve (one cell's RunConfig)."""

from ..errors import ConfigError
from .load import load_params, read_yaml
from .resolve import ModelConfig, RunConfig, gate_name, resolve_run, study_cells, task_params
from .schema import (
    BenchmarkParams,
    DataParams,
    EvalParams,
    LayerBenchParams,
    ModelPreset,
    Params,
    TaskParams,
    TrainConfig,
)

__all__ = [
    "BenchmarkParams",
    "ConfigError",
    "DataParams",
    "EvalParams",
    "LayerBenchParams",
    "ModelConfig",
    "ModelPreset",
    "Params",
    "RunConfig",
    "TaskParams",
    "TrainConfig",
    "gate_name",
    "load_params",
    "read_yaml",
    "resolve_run",
    "study_cells",
    "task_params",
]
