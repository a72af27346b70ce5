"""`moelab cell --every-variant --task T`: one task's whole study in one process, the study's stage
(study/dvc.yaml `task@<task>`): the task's trivial references, then every variant of params.yaml (routers x gates x
models, and the dense baseline), each seed trained, then evaluated (cell.py).

One process and one DVC stage per task instead of one per variant: every process pays ~3 s of
imports (torch, torch's optimizer machinery, DVCLive) and every DVC stage ~1 s of bookkeeping, which
was a third of the study's overhead (README, "What the pipeline costs"). Nothing up to date is
redone when the stage re-runs (say, after a router was added): a finished run is not trained again,
a run evaluated from the same config, checkpoint and evaluation code is not evaluated again, so the
stage costs what the changed variants cost. The metrics of variants no longer in params.yaml are
removed, so the report never shows a variant the study does not have; their checkpoints stay.

Layout (the report's input): <metrics-dir>/reference.json, <metrics-dir>/<variant>/{train,eval}/s<seed>.*,
checkpoints in <models-dir>/<variant>/s<seed>.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def run_task(args) -> None:
    """args: cell.py's flags (--task, --params, --models-dir, --metrics-dir, --data-dir, --quiet)."""
    from .cell import run_variant
    from .config import load_params
    from .errors import ConfigError
    from .reference import write_references

    params = load_params(args.params)
    if args.task not in params.tasks:
        raise ConfigError(f"--task {args.task!r} is not a task of the study; allowed: {', '.join(params.tasks)}")
    models_dir, metrics_dir = Path(args.models_dir), Path(args.metrics_dir)
    data_dir = args.data_dir or f"data/prepared/{args.task}"
    variants = study_variants(params, args.task)
    write_references(params, args.task, data_dir, metrics_dir / "reference.json")
    remove_stale_metrics(metrics_dir, set(variants))
    for name, runs in variants.items():
        run_variant(runs, models_dir / name, metrics_dir / name, data_dir, many=True, progress=not args.quiet)


def study_variants(params, task: str) -> dict:
    """Variant name -> its runs (one per seed): routers x gates x models, then the dense baseline."""
    from .config import resolve_run

    variants = {}
    cells = [dict(router=r, gate=g, model=m) for r in params.routers for g in params.gates for m in params.models]
    for cell in [*cells, dict(dense=True)]:
        runs = [resolve_run(params, task=task, seed=seed, **cell) for seed in params.seeds]
        variants[runs[0].name] = runs
    return variants


def remove_stale_metrics(metrics_dir: Path, variants: set[str]) -> None:
    """Delete the metrics directory of every variant the study no longer has."""
    if not metrics_dir.is_dir():
        return
    for d in sorted(metrics_dir.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and d.name not in variants:
            shutil.rmtree(d)
            print(f"removed {d}: variant {d.name!r} is no longer in the study")
