"""Typed configuration, a leaf of the package: schema (the sections of params.yaml and their allowed
ranges), load (YAML -> typed dataclasses, checked once at the edge) and run (what one resolved run is
built from). Nothing here imports the tasks, models or MoE layer; resolving params into runs, which
needs their registries, is moelab/resolve.py."""

from ..errors import ConfigError
from .load import TaskSchema, build_params, read_yaml
from .run import ModelConfig, RunConfig
from .schema import (
    BaseParams,
    BenchmarkParams,
    DataParams,
    EvalParams,
    InitParams,
    LayerBenchParams,
    ModelPreset,
    Params,
    TaskParams,
    TrainConfig,
)

__all__ = [
    "BaseParams",
    "BenchmarkParams",
    "ConfigError",
    "DataParams",
    "EvalParams",
    "InitParams",
    "LayerBenchParams",
    "ModelConfig",
    "ModelPreset",
    "Params",
    "RunConfig",
    "TaskParams",
    "TaskSchema",
    "TrainConfig",
    "build_params",
    "read_yaml",
]
