"""The claims report: every claim's parts judged by the rules in verdicts.py, written as
metrics/claims.json (diffable: one entry per claim with each part's effect, interval, n, verdict and
per-seed values, the claim's params as written and each cell's merged overrides; every resolved run
config stays in the claim's runs file, named there) and metrics/claims.md (the table), plus one
figure per claim (plots.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..errors import DataError
from ..io import atomic_write_text, read_json, write_json
from ..stats import mean_interval
from . import verdicts
from .spec import METRICS, ClaimsParams, ClaimSpec, PartSpec

SIGNIFICANT = 6  # digits kept in claims.json: stable across platforms, still exact enough to diff


def judge_part(part: PartSpec, runs: dict, spec: ClaimsParams) -> dict:
    """One part's verdict from the claim's runs file (cells -> seeds -> metrics)."""
    cells = runs["cells"]
    absent = [c for c in part.cell_names() if "seeds" not in cells[c]]
    record = {k: v for k, v in dataclasses.asdict(part).items() if v not in ("", [], None)}
    if absent:  # name the cells that lack a component (the others wait for them)
        lacking = [c for c in absent if cells[c].get("missing")] or absent
        why = "; ".join(f"{c}: {cells[c].get('not_run', 'no runs')}" for c in lacking)
        return {**record, "verdict": verdicts.NOT_RUN, "why": why}
    seeds, diverged = paired_seeds(runs, part.cell_names())
    if diverged:
        record["diverged"] = diverged  # seed -> cells whose training diverged: the seed is left out of every cell
    if not seeds:
        return {**record, "verdict": verdicts.INCONCLUSIVE, "why": "every seed diverged in some cell", "n": 0}
    values = {c: seed_values(runs, c, part.metric, seeds) for c in part.cell_names()}
    a, b = values.get(part.a), values.get(part.b)
    if part.kind == "difference":
        result = verdicts.difference(a, b, part.direction, spec.level)
    elif part.kind == "equivalence":
        result = verdicts.equivalence(a, b, part.margin, spec.alpha, spec.level)
    elif part.kind == "non_inferiority":
        result = verdicts.non_inferiority(a, b, part.margin, part.direction, spec.alpha, spec.level)
    elif part.kind == "variance_ratio":
        result = verdicts.variance_ratio(a, b, part.direction, spec.level)
    else:
        x = [setting_of(cells[c], part.x) for c in part.cells]
        result = verdicts.trend(x, [values[c] for c in part.cells], part.direction, spec.level)
        record["x_values"] = x
        record["steps"] = doubling_steps(part, values, x, spec.level)
    return {**record, **dataclasses.asdict(result), "values": values}


def paired_seeds(runs: dict, cells: list[str]) -> tuple[list[int], dict[str, list[str]]]:
    """The claim's seeds whose run finished in every one of `cells` (the pairs a test can use), and
    the others: seed -> the cells whose training diverged (non-finite loss)."""
    diverged = {
        str(seed): [c for c in cells if "diverged" in runs["cells"][c]["seeds"][str(seed)]] for seed in runs["seeds"]
    }
    return [s for s in runs["seeds"] if not diverged[str(s)]], {s: c for s, c in diverged.items() if c}


def seed_values(runs: dict, cell: str, metric: str, seeds: list[int]) -> list[float]:
    """The metric of `cell` at each of `seeds`, in that order (the pairing)."""
    out = []
    for seed in seeds:
        value = runs["cells"][cell]["seeds"][str(seed)].get(metric)
        if value is None:
            raise DataError(f"claim {runs['claim']}: cell {cell} has no {metric} (a dense model has no routing)")
        out.append(float(value))
    return out


def setting_of(cell: dict, key: str) -> float:
    """A resolved MoE setting of a cell (a field like n_experts, or an option)."""
    moe = cell["resolved"]["model"]["moe"] or {}
    value = moe.get(key, moe.get("options", {}).get(key))
    if value is None:
        raise DataError(f"no MoE setting {key!r} in a resolved cell")
    return float(value)


def doubling_steps(part: PartSpec, values: dict, x: list[float], level: float) -> list[dict]:
    """Adjacent cells of a trend (e.g. E -> 2E): the paired difference and where it lies."""
    steps = []
    for (lo_cell, lo_x), (hi_cell, hi_x) in zip(zip(part.cells, x), zip(part.cells[1:], x[1:])):
        iv = mean_interval(verdicts.paired_differences(values[hi_cell], values[lo_cell]), level)
        side = verdicts.side_of(iv.low, iv.high)
        steps.append({"from": lo_x, "to": hi_x, "mean": iv.mean, "low": iv.low, "high": iv.high, "side": side})
    return steps


def crossover(steps: list[dict], direction: str) -> str:
    """Where adding cells stops helping: the first step whose interval lies on the other side."""
    other = "higher" if direction == "lower" else "lower"
    for step in steps:
        if step["side"] == other:
            return f"the metric turns {other} from {step['from']:g} to {step['to']:g} (interval excludes 0)"
    helping = [s for s in steps if s["side"] == direction]
    if len(helping) == len(steps):
        return f"every step goes {direction} (no crossover up to {steps[-1]['to']:g})"
    last = max((i for i, s in enumerate(steps) if s["side"] == direction), default=None)
    if last is None:
        return "no step's interval excludes 0"
    return f"steps are {direction} up to {steps[last]['to']:g}; beyond, no step's interval excludes 0"


def trend_notes(part_name: str, part: PartSpec, judged: dict, cells: dict) -> list[str]:
    """The steps between adjacent cells, where the trend stops, and (x = n_experts) tokens per expert."""
    steps = "; ".join(
        f"{s['from']:g} -> {s['to']:g}: {s['mean']:+.4f}"
        + ("" if s["low"] is None else f" ± {(s['high'] - s['low']) / 2:.4f}")
        + f" ({s['side'] or 'interval contains 0'})"
        for s in judged["steps"]
    )
    notes = [
        f"{part_name}, each step: {steps}",
        f"{part_name}, crossover: {crossover(judged['steps'], part.direction)}",
    ]
    if part.x == "n_experts":
        per_expert = [
            f"{cells[c]['training_tokens'] * setting_of(cells[c], 'top_k') / setting_of(cells[c], 'n_experts'):,.0f}"
            for c in part.cells
        ]
        notes.append(f"{part_name}, training tokens per expert ({', '.join(part.cells)}): {', '.join(per_expert)}")
    return notes


# ---------------------------------------------------------------- one claim
def judge_claim(name: str, claim: ClaimSpec, runs: dict, spec: ClaimsParams) -> dict:
    parts = {part_name: judge_part(part, runs, spec) for part_name, part in claim.parts.items()}
    metrics = sorted({part.metric for part in claim.parts.values()}, key=list(METRICS).index)
    cells = {}
    for cell_name, cell in runs["cells"].items():
        # the resolved configs (every field of each run) stay in the runs file: claims.json keeps what was asked
        record = {k: v for k, v in cell.items() if k not in ("seeds", "resolved")}
        if "seeds" in cell:
            seeds, diverged = paired_seeds(runs, [cell_name])
            record["diverged_seeds"] = sorted(int(s) for s in diverged)
            record["means"] = {m: _mean_record(seed_values(runs, cell_name, m, seeds), spec.level) for m in metrics}
        cells[cell_name] = record
    notes = [
        note
        for part_name, part in claim.parts.items()
        if part.kind == "trend" and "steps" in parts[part_name]
        for note in trend_notes(part_name, part, parts[part_name], runs["cells"])
    ]
    return {
        "title": claim.title,
        "source": claim.source,
        "setting": claim.setting,
        "verdict": verdicts.combine([p["verdict"] for p in parts.values()]),
        "seeds": runs["seeds"],
        "parts": parts,
        "cells": cells,
        "notes": notes,
        "cost": runs["cost"],
        "params": dataclasses.asdict(claim),
    }


def _mean_record(values: list[float], level: float) -> dict:
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    iv = mean_interval(values, level)
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


# ---------------------------------------------------------------- the whole study
def build_report(spec: ClaimsParams, runs_dir: Path) -> dict:
    claims, profiles = {}, set()
    for name, claim in spec.claims.items():
        path = Path(runs_dir) / f"{name}.json"
        if not path.exists():
            raise DataError(f"{path} not found: run the claim first (`moelab claims run --claim {name}`)")
        runs = read_json(path)
        profiles.add(runs["profile"])
        claims[name] = {**judge_claim(name, claim, runs, spec), "runs_file": str(path)}
    if len(profiles) > 1:
        raise DataError(f"{runs_dir} mixes profiles {sorted(profiles)}: re-run every claim with the same profile")
    return {
        "profile": profiles.pop(),
        "rules": {"level": spec.level, "alpha": spec.alpha, "quality_margin": spec.quality_margin},
        "claims": claims,
    }


def write_report(spec: ClaimsParams, runs_dir: Path, json_path: Path, md_path: Path, plots_dir: Path) -> dict:
    from .plots import write_plots

    report = rounded(build_report(spec, runs_dir))
    write_json(json_path, report)
    atomic_write_text(md_path, markdown(report))
    write_plots(report, Path(plots_dir))
    return report


def rounded(value):
    """Floats to SIGNIFICANT digits, recursively (non-finite floats become None: JSON has no inf)."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


# ---------------------------------------------------------------- markdown
def effect_text(part: dict) -> str:
    """`mean ± half-width` (ratio: [low, high]) with n, in the metric's unit."""
    if part["verdict"] == verdicts.NOT_RUN:
        return "not run"
    n = f"n = {part['n']}" + (f" ({len(part['diverged'])} seed(s) diverged, left out)" if part.get("diverged") else "")
    if part.get("estimate") is None:
        return f"no finished pair, {n}"
    if part["kind"] == "variance_ratio":
        interval = "no interval" if part["low"] is None else f"[{part['low']:.3g}, {part['high']:.3g}]"
        return f"ratio {part['estimate']:.3g}, {interval}, {n}"
    unit = METRICS[part["metric"]][1]
    if part["low"] is None:
        text = f"{part['estimate']:+.4g} (no interval)"
    else:
        text = f"{part['estimate']:+.4g} ± {(part['high'] - part['low']) / 2:.2g}"
    if part["kind"] == "trend":
        text += f" {unit} per doubling" if unit else " per doubling"
    elif unit:
        text += f" {unit}"
    if part["metric"] in ("test_loss", "val_loss") and part["kind"] != "trend":
        text += f" (ppl x{math.exp(part['estimate']):.3f})"
    return f"{text}, {n}"


def markdown(report: dict) -> str:
    rules = report["rules"]
    lines = ["# Published claims, re-tested", ""]
    if report["profile"] != "full":
        lines += [f"> **{report['profile']} profile**: a smoke test of the machinery; these verdicts mean nothing.", ""]
    lines += [
        f"Effects are paired by seed (cell a - cell b per seed), mean ± half-width of the {rules['level']:.0%} "
        f"Student-t interval; equivalence (TOST) and no-cost (non-inferiority) parts are decided on the "
        f"{1 - 2 * rules['alpha']:.0%} interval against a margin of {rules['quality_margin']:g} nats "
        f"(ppl x{math.exp(rules['quality_margin']):.3f}). Rules: claims/params.yaml, moelab/claims/verdicts.py.",
        "",
        "| claim | source | setting here | effect measured (mean ± 95% CI, n seeds) | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, claim in report["claims"].items():
        effects = "<br>".join(
            f"{p.get('label') or part_name}: {effect_text(p)} → {p['verdict']}"
            for part_name, p in claim["parts"].items()
        )
        lines.append(
            f"| **{name}**: {claim['title']} | {claim['source']} | {claim['setting']} | {effects} | "
            f"**{claim['verdict']}** |"
        )
    lines += ["", "## Details", ""]
    for name, claim in report["claims"].items():
        lines += _details(name, claim)
    lines += [
        "## Cost",
        "",
        "Wall: this stage, runs shared with an earlier claim reused. Compute: the core-seconds its runs took to "
        "train and evaluate, wherever they trained.",
        "",
        "| claim | runs | at a time | wall s | compute s |",
        "|---|---|---|---|---|",
    ]
    for name, claim in report["claims"].items():
        cost = claim["cost"]
        lines.append(f"| {name} | {cost['runs']} | {cost['jobs']} | {cost['wall_s']:g} | {cost['compute_s']:g} |")
    total = sum(c["cost"]["wall_s"] for c in report["claims"].values())
    lines += ["", f"Total wall time of the claim stages: {total:.0f} s.", ""]
    return "\n".join(lines)


def _details(name: str, claim: dict) -> list[str]:
    lines = [f"### {name}: {claim['verdict']}", "", f"{claim['title']} ({claim['source']}).", ""]
    lines += ["| part | kind | effect | rule interval | verdict |", "|---|---|---|---|---|"]
    for part_name, part in claim["parts"].items():
        tested = part.get("why", "")
        if part.get("test_low") is not None:
            tested = f"{part['test_level']:.0%}: [{part['test_low']:+.4g}, {part['test_high']:+.4g}]"
            tested += f", margin {part['margin']:g}"
        elif part.get("low") is not None:
            tested = f"{part['level']:.0%}: [{part['low']:+.4g}, {part['high']:+.4g}]"
        lines.append(f"| {part_name} | {part['kind']} | {effect_text(part)} | {tested} | {part['verdict']} |")
    metrics = sorted({p["metric"] for p in claim["parts"].values()}, key=list(METRICS).index)
    lines += ["", "| cell | " + " | ".join(METRICS[m][0] for m in metrics) + " | FFN FLOPs/token |"]
    lines.append("|---|" + "---|" * (len(metrics) + 1))
    for cell_name, cell in claim["cells"].items():
        if "means" not in cell:
            lines.append(f"| {cell_name} | " + " | ".join("not run" for _ in metrics) + " | – |")
            continue
        shown = [_mean_text(cell["means"][m]) for m in metrics]
        diverged = f" (seeds {cell['diverged_seeds']} diverged)" if cell["diverged_seeds"] else ""
        lines.append(f"| {cell_name}{diverged} | " + " | ".join(shown) + f" | {cell['ffn_flops_per_token']:.4g} |")
    lines.append("")
    lines += [f"- {note}" for note in claim["notes"]]
    return [*lines, ""] if claim["notes"] else lines


def _mean_text(record: dict) -> str:
    if record["mean"] is None:
        return "diverged"
    if record["low"] is None:
        return f"{record['mean']:.4g}"
    return f"{record['mean']:.4g} ± {(record['high'] - record['low']) / 2:.2g}"
