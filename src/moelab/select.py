"""Command-line flags that name one cell of the study (shared by train, evaluate and benchmark)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .load import load_params
from .resolve import RunConfig, resolve_run
from .schema import SEED_RANGE, Params


def add_cell_arguments(p: argparse.ArgumentParser, seeds: bool = True) -> None:
    """Flags naming one run; any left out fall back to the scalar keys of params.yaml."""
    p.add_argument("--task")
    p.add_argument("--router")
    p.add_argument("--gate", help="a name under gate_presets (sets norm, top_k and its option overrides)")
    p.add_argument("--model", help="a model-size preset of the task")
    p.add_argument("--seed", type=int)
    if seeds:
        p.add_argument(
            "--all-seeds",
            action="store_true",
            help="every seed of params.yaml `seeds`, each in <dir>/s<seed> (the study's stages)",
        )
    p.add_argument("--dense", action="store_true", help="the dense baseline instead of an MoE")
    p.add_argument("--params", default="params.yaml")


def runs_from_args(args) -> tuple[Params, list[RunConfig]]:
    """The run(s) the flags name: one, or one per seed with --all-seeds. Validates params first."""
    params = load_params(args.params)
    check_seed_flag(args.seed)
    seeds = params.seeds if getattr(args, "all_seeds", False) else [args.seed]
    return params, [
        resolve_run(
            params, task=args.task, router=args.router, gate=args.gate, model=args.model, seed=seed, dense=args.dense
        )
        for seed in seeds
    ]


def check_seed_flag(seed: int | None) -> None:
    """--seed has the range of params.yaml `seed` (the generators take 32-bit seeds)."""
    problem = SEED_RANGE.metadata["allowed"].problem(seed) if seed is not None else None
    if problem:
        raise ConfigError(f"--seed {seed} is not allowed; allowed: {problem}")
