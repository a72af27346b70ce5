"""The flags that name what a command trains, evaluates or benchmarks, and the runs (with their paths)
they name: a study variant's runs (every seed of params.yaml, or --seed), or the one experiment.

    --task T --router R --gate G --model S     an MoE variant of the study, every seed of params.yaml (a flag
                                               left out falls back to params.yaml's scalar key: task, router,
                                               norm + top_k, model)
    --task T --dense                           the task's dense baseline, every seed
    (none of those, or --exp)                  the experiment: params.yaml's scalar keys, one run
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Params, RunConfig
from .config.schema import SEED_RANGE
from .errors import ConfigError
from .study import RunPaths, Variant, exp_paths, experiment, prepared_dir, run_paths, runs


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", action="store_true", help="the one experiment (params.yaml's scalar keys): the default")
    p.add_argument("--task", help="a study variant of this task (with --router/--gate/--model, or --dense)")
    p.add_argument("--router")
    p.add_argument("--gate", help="a name under gate_presets (sets norm, top_k and its option overrides)")
    p.add_argument("--model", help="a model-size preset of the task")
    p.add_argument("--dense", action="store_true", help="the task's dense baseline")
    p.add_argument(
        "--seed", type=int, help="this seed only (default: every seed of params.yaml; the experiment's seed)"
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--models-dir", help="checkpoints: <dir>/<run>/ (default: the study's layout, moelab/study.py)")
    p.add_argument("--metrics-dir", help="metrics: <dir>/{train,eval}/<run>.json (default: the study's layout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclass
class Selection:
    params: Params
    variant: Variant | None  # None: the experiment
    runs: list[tuple[RunConfig, RunPaths]]
    data_dir: Path


def select_runs(args) -> Selection:
    """The runs the flags name, each with its paths (validates params.yaml first)."""
    from .resolve import gate_name, load_params

    params = load_params(args.params)
    check_seed_flag(args.seed)
    named = [f"--{f}" for f in ("task", "router", "gate", "model") if getattr(args, f) is not None]
    named += ["--dense"] if args.dense else []
    if args.exp or not named:
        if named:
            raise ConfigError(f"--exp is params.yaml's scalar keys: drop {', '.join(named)}")
        run = experiment(params)
        if args.seed is not None:
            run = replace(run, seed=args.seed)
        return Selection(params, None, [(run, _override(exp_paths(), args))], _data_dir(args, run.task))
    task = args.task or params.task
    if args.dense and set(named) - {"--task", "--dense"}:
        raise ConfigError(f"--dense names the dense baseline: drop {', '.join(set(named) - {'--task', '--dense'})}")
    if args.dense:
        variant = Variant(task)
    else:
        gate = args.gate or gate_name(params, params.norm, params.top_k)
        variant = Variant(task, args.router or params.router, gate, args.model or params.model)
    seeds = params.seeds if args.seed is None else [args.seed]
    chosen = [(run, _override(run_paths(variant, run.seed), args)) for run in runs(params, variant, seeds)]
    return Selection(params, variant, chosen, _data_dir(args, task))


def _override(paths: RunPaths, args) -> RunPaths:
    models = Path(args.models_dir) if args.models_dir else paths.models
    metrics = Path(args.metrics_dir) if args.metrics_dir else paths.metrics
    return RunPaths(models, metrics, paths.run)


def _data_dir(args, task: str) -> Path:
    return Path(args.data_dir) if args.data_dir else prepared_dir(task)


def check_seed_flag(seed: int | None) -> None:
    """--seed has the range of params.yaml `seed` (the generators take 32-bit seeds)."""
    problem = SEED_RANGE.metadata["allowed"].problem(seed) if seed is not None else None
    if problem:
        raise ConfigError(f"--seed {seed} is not allowed; allowed: {problem}")
