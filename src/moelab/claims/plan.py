"""`moelab claims plan`: what the claims study will cost and resolve, from the params and the pilots,
before anything of the main run trains.

Runs: each claim's cells x seeds. Distinct trained runs: the (config, seed) pairs that actually
train, once a cell several claims share (same resolved config: spec.run_key) and the pilot's runs
(the main run's first seeds at the budget's steps) are counted once; every claim stage still
evaluates each of its runs. Cost: per distinct run, steps x seconds per step (the pilot's measured
one for that model and batch, whatever the pilot's steps; else --s-per-step) plus the evaluation
(the pilot's, else --eval-s), summed; wall = that / --jobs. Power: per part, the pilot's paired SD
-> seeds needed for the part's target margin, and the margin the claim's seeds resolve (power.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from pathlib import Path

from ..io import read_json
from .power import part_power
from .runs import part_series
from .spec import ClaimsParams, plan_claim, run_key


def speed_key(resolved: dict) -> str:
    """What a training step's time depends on: the model and the batch (not the number of steps, so a
    shorter pilot prices the full runs). resolved: a run config as a dict (the runs file's `resolved`)."""
    train = resolved["train"]
    shape = {"model": resolved["model"], "batch": [train["batch_size"], train["grad_accum"]]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def measured_speed(pilot_dir: Path, names: list[str]) -> dict[str, dict]:
    """speed_key -> {"train_step_s", "evaluate_s", "steps"}: the means over the pilots' finished runs."""
    speed: dict[str, dict] = {}
    for name in names:
        path = Path(pilot_dir) / f"{name}.json"
        if not path.exists():
            continue
        pilot = read_json(path)
        for cell in pilot["cells"].values():
            done = [r for r in cell.get("seeds", {}).values() if "diverged" not in r and r.get("train_step_s")]
            if done and cell.get("resolved"):
                speed[speed_key(cell["resolved"])] = {
                    "train_step_s": statistics.fmean(r["train_step_s"] for r in done),
                    "evaluate_s": statistics.fmean(r["evaluate_s"] for r in done),
                    "steps": pilot.get("steps"),
                }
    return speed


def build_plan(spec: ClaimsParams, names: list[str], base: dict, s_per_step, eval_s: float, jobs: int, pilot_dir):
    speed = measured_speed(pilot_dir, list(spec.claims))
    trained: dict[tuple[str, int], tuple[int, str]] = {}  # (run_key, seed) -> (steps, speed_key): trains once
    evaluations: list[str] = []  # speed_key of every evaluation (each stage evaluates its runs)
    unpriced: set[str] = set()
    claims: dict = {}
    pilot_seeds = list(spec.pilot.seeds) if spec.pilot else []

    def add(plan) -> tuple[int, int]:
        runs = new = 0
        for cell in plan.ran().values():
            for seed, run in cell.runs.items():
                key, shape = run_key(run), speed_key(dataclasses.asdict(run))
                runs += 1
                evaluations.append(shape)
                if (key, seed) not in trained:
                    trained[(key, seed)] = (run.train.steps, shape)
                    new += 1
        return runs, new

    if spec.pilot:
        for name in names:
            pilot = plan_claim(spec, name, base, seeds=pilot_seeds, steps=spec.pilot.steps, profile="pilot")
            runs, new = add(pilot)
            claims[name] = {"pilot_runs": runs, "pilot_new": new}
    for name in names:
        plan = plan_claim(spec, name, base)
        runs, new = add(plan)
        cells = len(plan.ran())
        claims.setdefault(name, {}).update({"cells": cells, "seeds": len(plan.seeds), "runs": runs, "new": new})
        claims[name]["power"] = power_table(spec, name, pilot_dir)

    def step_s(key: str) -> float | None:
        if key in speed:
            return speed[key]["train_step_s"]
        unpriced.add(key)
        return s_per_step

    train_s = [(steps * s if (s := step_s(shape)) is not None else None) for steps, shape in trained.values()]
    eval_total = sum(speed[k]["evaluate_s"] if k in speed else eval_s for k in evaluations)
    priced = None not in train_s
    compute = sum(train_s) + eval_total if priced else None
    return {
        "claims": claims,
        "runs": len(evaluations),
        "distinct_trained_runs": len(trained),
        "measured_configs": len(speed),
        "unpriced_configs": sorted(unpriced),
        "s_per_step": s_per_step,
        "eval_s": eval_s,
        "jobs": jobs,
        "compute_s": compute,
        "wall_s": None if compute is None else compute / jobs,
        "budget": {"status": spec.budget.status, "steps": spec.budget.train["steps"]},
    }


def power_table(spec: ClaimsParams, name: str, pilot_dir) -> dict:
    path = Path(pilot_dir) / f"{name}.json"
    pilot = read_json(path) if path.exists() else {}
    claim = spec.claims[name]
    return {
        part_name: part_power(part, spec, part_series(part, pilot) if pilot else [], len(claim.seeds), pilot)
        for part_name, part in claim.parts.items()
        if part.role != "measurement"
    }


def print_plan(spec: ClaimsParams, names: list[str], base: dict, args) -> dict:
    plan = build_plan(spec, names, base, args.s_per_step, args.eval_s, args.jobs, Path(args.pilot_dir))
    print(f"budget ({plan['budget']['status']}): {plan['budget']['steps']} steps per run")
    print(f"{'claim':24s} {'cells':>5s} {'seeds':>5s} {'runs':>5s} {'new':>5s} {'pilot':>5s}")
    for name, row in plan["claims"].items():
        print(
            f"{name:24s} {row['cells']:5d} {row['seeds']:5d} {row['runs']:5d} {row['new']:5d} "
            f"{row.get('pilot_runs', 0):5d}"
        )
    print(
        f"runs (evaluations, pilots included): {plan['runs']}; distinct trained runs: {plan['distinct_trained_runs']}"
    )
    if plan["compute_s"] is None:
        print(
            f"cost: {len(plan['unpriced_configs'])} config(s) have no pilot: pass --s-per-step "
            "(seconds per training step of one run, one thread) to estimate"
        )
    else:
        print(
            f"cost: {plan['compute_s']:.0f} core-s -> ~{plan['wall_s'] / 60:.1f} min wall at {plan['jobs']} at a time "
            f"({plan['measured_configs']} config(s) priced by pilots, {len(plan['unpriced_configs'])} by --s-per-step)"
        )
    print("\npower (target: the part's practically relevant margin; resolvable: the half-width at the seeds set)")
    print(
        f"{'claim / part':44s} {'pilot sd':>9s} {'n pilot':>7s} {'target':>8s} {'n needed':>8s} {'n used':>6s} "
        f"{'resolvable':>10s} {'margin':>8s}"
    )
    for name, row in plan["claims"].items():
        for part_name, power in row["power"].items():
            sd = "-" if power.get("pilot_sd") is None else f"{power['pilot_sd']:.3g}"
            needed = power.get("n_needed", "-") if power.get("pilot_sd") is not None else "-"
            needed = ">10000" if needed is None else needed
            res = "-" if power.get("resolvable_at_n_used") is None else f"{power['resolvable_at_n_used']:.3g}"
            target = "-" if power.get("target") is None else f"{power['target']:g}"
            margin = "-" if power.get("margin_used") is None else f"{power['margin_used']:g}"
            hint = ""
            if "suggested_margin" in power:
                cautious = power.get("n_needed_sd_ucl80")
                hint = (
                    f"  <- seeds: {needed} ({'>10000' if cautious is None else cautious} at the SD's 80% upper "
                    f"limit), or margin: {power['suggested_margin']:g} (target_margin: {target})"
                )
            print(
                f"{name + ' / ' + part_name:44s} {sd:>9s} {power['pilot_n']:7d} {target:>8s} {needed!s:>8s} "
                f"{power['n_used']:6d} {res:>10s} {margin:>8s}{hint}"
            )
    steps = {row["power"][p].get("pilot_steps") for row in plan["claims"].values() for p in row["power"]} - {None}
    if steps - {plan["budget"]["steps"]}:
        print(f"note: pilots at {sorted(steps)} steps, the budget is {plan['budget']['steps']}: their SDs may differ")
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
    return plan
