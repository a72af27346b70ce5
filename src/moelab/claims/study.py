"""Run one claim: train and evaluate every cell x seed with the project's own code paths
(train.loop.train, evaluate.evaluate), then write the per-seed numbers the verdicts read (the runs
file, runs.py; a pilot writes the same format for its few seeds).

Besides the evaluation's metrics, each run records its training speed: seconds per step and tokens
per second of the training itself (train metrics `wall_s` / steps, `train_tokens_per_s`). Those are
measured with `jobs` runs side by side, one thread each: compare them within a stage, on a machine
doing nothing else.

Runs go `jobs` at a time, each in its own process with one torch thread, so a run's numbers do not
depend on how many ran beside it (jobs = 1 runs them one after another in this process, also with
one thread).

Checkpoints live in <models-dir>/<variant>-<config hash>/s<seed>, keyed by everything that decides the
weights (the resolved run config minus the seed and the evaluate section). A run is a deterministic
function of that config and the training code, so the directory is a memo shared by every claim: a
cell that two claims share (e.g. the top-1 baseline) trains once; an interrupted stage resumes; a
finished run of an unchanged config and code is not trained again (train.loop checks both, and
starts afresh when they differ). It is not a DVC output: it changes how long a stage takes, never
what it writes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..config import RunConfig
from ..errors import NonFiniteLoss
from ..io import write_json
from .spec import METRICS, ClaimPlan, cell_record, run_key


def run_claim(plan: ClaimPlan, data_dir: Path, models_dir: Path, out: Path, jobs: int = 1, log=print) -> dict:
    """Train + evaluate every run of the plan; write `out` (the cells, their resolved configs and
    each seed's metrics). Returns what was written."""
    work = [(cell, seed, run) for cell, plan_cell in plan.ran().items() for seed, run in plan_cell.runs.items()]
    start = time.perf_counter()
    results = _execute(work, Path(data_dir), Path(models_dir), jobs)
    wall = time.perf_counter() - start
    cells = {}
    for name, cell in plan.cells.items():
        record = cell_record(cell)
        if cell.runs:
            record["seeds"] = {str(seed): results[(name, seed)] for seed in cell.runs}
        cells[name] = record
    first = next((run for _, _, run in work), None)
    written = {
        "claim": plan.name,
        "profile": plan.profile,
        "seeds": plan.seeds,
        "steps": first.train.steps if first else None,  # every cell's (equal tokens: check_fairness)
        "data": dataclasses.asdict(first.data) if first else None,  # the split the references must share
        "cells": cells,
        "cost": {
            "wall_s": round(wall, 1),
            "jobs": jobs,
            "runs": len(work),
            "run_s": round(sum(r["train_s"] + r["evaluate_s"] for r in results.values()), 1),
            # what the runs cost when they trained, wherever that was (a shared run: in an earlier claim)
            "compute_s": round(sum(r.get("train_wall_s", r["train_s"]) + r["evaluate_s"] for r in results.values()), 1),
        },
    }
    write_json(out, written)
    log(f"claim {plan.name}: {len(work)} runs in {wall:.0f}s ({jobs} at a time) -> {out}")
    return written


def _execute(work: list, data_dir: Path, models_dir: Path, jobs: int) -> dict:
    """Every (cell, seed) run, `jobs` at a time, one thread each (moelab/parallel.py)."""
    from ..parallel import run_all

    keys = [(cell, seed) for cell, seed, _ in work]
    args = [(run, data_dir, models_dir / run_key(run), seed) for _, seed, run in work]
    return dict(zip(keys, run_all(run_one, args, jobs)))


def run_one(run: RunConfig, data_dir: Path, variant_dir: Path, seed: int) -> dict:
    """Train (or resume, or reuse a finished run) and evaluate one cell x seed; its metrics, or
    `diverged` (the reason) when training stopped on a non-finite loss."""
    from ..evaluate import evaluate
    from ..study import RunPaths, seed_run
    from ..train.loop import train

    paths = RunPaths(variant_dir, variant_dir, seed_run(seed))  # checkpoints <dir>/s<seed>, metrics beside
    start = time.perf_counter()
    try:
        trained = train(run, data_dir, paths, progress=False)
    except NonFiniteLoss as err:  # an outcome of the run (e.g. an unstable initialisation), not of the study
        return {"diverged": str(err), "train_s": time.perf_counter() - start, "evaluate_s": 0.0}
    evaluated_at = time.perf_counter()
    evaluated = evaluate(run, data_dir, paths, progress=False)
    done = time.perf_counter()
    values = {key: evaluated.get(key) for key in METRICS if key in evaluated}
    values["max_violation_global"] = max_violation_global(evaluated.get("layers", []))
    # the training's own speed (a reused run: when it trained), over the steps that process ran
    trained_steps = max(trained["steps"] - (trained.get("resumed_from_step") or 0), 1)
    values["train_step_s"] = trained["wall_s"] / trained_steps
    values["train_tokens_per_s"] = trained.get("train_tokens_per_s")
    return {
        **values,
        "run_dir": str(paths.checkpoints),
        "flops_per_token": evaluated["flops_per_token"],
        "train_wall_s": trained["wall_s"],  # of the training itself (a reused run: when it trained)
        "train_s": evaluated_at - start,  # this process's time: training, or loading a finished run
        "evaluate_s": done - evaluated_at,
    }


def max_violation_global(layers: list[dict]) -> float | None:
    """MaxVio of the loads summed over the whole test split (max_i load_i / mean load - 1), averaged
    over MoE layers; None for a dense model."""
    values = []
    for layer in layers:
        load = layer["tokens_per_expert"]
        mean = sum(load) / len(load) if load else 0.0
        values.append(max(load) / mean - 1.0 if mean > 0 else 0.0)
    return sum(values) / len(values) if values else None
