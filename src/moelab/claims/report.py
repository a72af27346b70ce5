"""The claims report: every claim's parts judged by the rules in verdicts.py, and three files.

  metrics/claims.json          DVC metrics, numbers only (`dvc metrics show`, `dvc exp show` stay
                               narrow): per claim its verdict code and, per claim part, its effect
                               and verdict code (verdicts.VERDICT_CODES; the legend is in the details)
  metrics/claims.details.json  everything else: the rules, the bar, each part's effect, intervals,
                               n, p and Holm-adjusted p, per-seed values and verdict, the power rows,
                               each cell's merged overrides and means, the claim's params as written
                               (every resolved run config stays in the claim's runs file)
  metrics/claims.md            the tables: verdicts, power, Holm, details, cost

plus one figure per claim (plots.py).

Order of judgement, per part: the cells' runs (not run / diverged seeds left out) -> the rule of its
kind -> for a quality part, the regime (out of regime when a cell's upper bound of mean test loss is
not below the bar) -> its role's name (manipulation check / measured). Then, across the study, Holm
over the claim parts' p-values; then each claim's verdict from its claim parts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from ..errors import DataError
from ..io import atomic_write_text, meta_path, read_json, write_json
from ..stats import mean_interval
from . import verdicts
from .power import part_power
from .runs import paired_seeds, part_series, seed_values, setting_of
from .spec import METRICS, QUALITY_METRICS, ClaimsParams, ClaimSpec, PartSpec

SIGNIFICANT = 6  # digits kept in the JSON files: stable across platforms, still exact enough to diff
BAR_METRIC = "test_loss"  # what a cell's upper bound is compared with


# ---------------------------------------------------------------- the bar
def read_bar(path: Path, role: str = "bar") -> dict:
    """The reference row of `role` in a references file (moelab references --task lm): its name,
    test loss and perplexity, and the data config it was scored on (its provenance, when present)."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path} not found: the in-regime bar is the references' row of role {role!r} "
            "(dvc repro study/dvc.yaml:references@lm, or pass --references)"
        )
    refs = read_json(path)
    rows = [(name, row) for name, row in refs.items() if isinstance(row, dict) and row.get("role") == role]
    if len(rows) != 1 or BAR_METRIC not in rows[0][1]:
        raise DataError(f"{path}: expected exactly one row of role {role!r} with a {BAR_METRIC}, found {len(rows)}")
    name, row = rows[0]
    bar = {"name": name, "role": role, "path": str(path), BAR_METRIC: float(row[BAR_METRIC])}
    bar.update({k: row[k] for k in ("test_ppl", "description") if k in row})
    meta = meta_path(path)
    if meta.exists():
        bar["data"] = read_json(meta).get("config", {}).get("data")
    return bar


def check_same_split(bar: dict, runs: dict) -> None:
    """The bar was scored on the claim's data (same corpus, tokenizer and split), or it means nothing."""
    if bar.get("data") and runs.get("data") and bar["data"] != runs["data"]:
        differ = sorted(k for k in set(bar["data"]) | set(runs["data"]) if bar["data"].get(k) != runs["data"].get(k))
        raise DataError(
            f"{bar['path']} was scored on other data than claim {runs['claim']} ({', '.join(differ)} differ): "
            "re-run the references of the claims' data"
        )


def cell_upper(runs: dict, cell: str, level: float) -> float | None:
    """The `level` upper bound of a cell's mean test loss over its finished seeds (None: < 2 of them)."""
    seeds, _ = paired_seeds(runs, [cell])
    if len(seeds) < 2:
        return None
    return mean_interval(seed_values(runs, cell, BAR_METRIC, seeds), level).high


# ---------------------------------------------------------------- one part
def judge_part(part: PartSpec, runs: dict, spec: ClaimsParams, bar: dict | None = None) -> dict:
    """One part's verdict from the claim's runs file (cells -> seeds -> metrics), before Holm.
    bar: the in-regime reference (read_bar); None only where no regime is judged (a unit test)."""
    cells = runs["cells"]
    absent = [c for c in part.cell_names() if "seeds" not in cells[c]]
    record = {k: v for k, v in dataclasses.asdict(part).items() if v not in ("", [], None)}
    record["role"] = part.role
    if absent:  # name the cells that lack a component (the others wait for them)
        lacking = [c for c in absent if cells[c].get("missing")] or absent
        why = "; ".join(f"{c}: {cells[c].get('not_run', 'no runs')}" for c in lacking)
        return {**record, "verdict": verdicts.NOT_RUN, "why": why}
    seeds, diverged = paired_seeds(runs, part.cell_names())
    if diverged:
        record["diverged"] = diverged  # seed -> cells whose training diverged: the seed is left out of every cell
    regime = part_regime(part, runs, spec, bar)  # decided first: it takes precedence over the rule
    if regime is not None:
        record["regime"] = regime
    out_of_regime = bool(regime and regime["not_below"])
    why_regime = ""
    if out_of_regime:
        shown = ", ".join(f"{c} {_num(regime['upper'][c])}" for c in regime["not_below"])
        why_regime = (
            f"the {spec.level:.0%} upper bound of mean test loss is not below the {bar['name']} "
            f"bar {bar[BAR_METRIC]:.4g} in {shown}"
        )
    if not seeds:
        verdict = verdicts.OUT_OF_REGIME if out_of_regime else verdicts.for_role(verdicts.INCONCLUSIVE, part.role)
        return {**record, "verdict": verdict, "why": why_regime or "every seed diverged in some cell", "n": 0}
    values = {c: seed_values(runs, c, part.metric, seeds) for c in part.cell_names()}
    result = _rule(part, values, cells, spec)
    if part.kind == "trend":
        x = [setting_of(cells[c], part.x) for c in part.cells]
        record["x_values"] = x
        record["steps"] = doubling_steps(part, values, x, spec.level)
    judged = {**record, **dataclasses.asdict(result), "values": values, "rule_verdict": result.verdict}
    if out_of_regime:  # the effect and its interval are still reported, the rule's verdict is not the part's
        return {**judged, "verdict": verdicts.OUT_OF_REGIME, "why": why_regime}
    return {**judged, "verdict": verdicts.for_role(result.verdict, part.role)}


def part_regime(part: PartSpec, runs: dict, spec: ClaimsParams, bar: dict | None) -> dict | None:
    """For a quality part (and a bar): each deciding cell's upper bound of mean test loss, and those not below
    the bar. None for other metrics."""
    if part.metric not in QUALITY_METRICS or bar is None:
        return None
    upper = {c: cell_upper(runs, c, spec.level) for c in part.regime_cells or part.cell_names()}
    return {"bar": bar[BAR_METRIC], "upper": upper, "not_below": verdicts.regime_failures(upper, bar[BAR_METRIC])}


def _rule(part: PartSpec, values: dict, cells: dict, spec: ClaimsParams) -> verdicts.PartResult:
    a, b = values.get(part.a), values.get(part.b)
    if part.kind == "difference":
        return verdicts.difference(a, b, part.direction, spec.level)
    if part.kind == "equivalence":
        return verdicts.equivalence(a, b, part.margin, spec.alpha, spec.level)
    if part.kind == "non_inferiority":
        return verdicts.non_inferiority(a, b, part.margin, part.direction, spec.alpha, spec.level)
    if part.kind == "variance_ratio":
        floor = None
        if part.absent_if_below is not None:
            floor = verdicts.published_ratio_floor(**dataclasses.asdict(part.absent_if_below), level=spec.level)
        return verdicts.variance_ratio(a, b, part.direction, spec.level, floor)
    x = [setting_of(cells[c], part.x) for c in part.cells]
    return verdicts.trend(x, [values[c] for c in part.cells], part.direction, spec.level)


def _num(value) -> str:
    return "no interval" if value is None else f"{value:.4g}"


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
def judge_claim(name: str, claim: ClaimSpec, runs: dict, spec: ClaimsParams, bar: dict | None = None) -> dict:
    """A claim's parts (before Holm), cells, regime, notes and cost; its verdict is set by finish_claim."""
    parts = {part_name: judge_part(part, runs, spec, bar) for part_name, part in claim.parts.items()}
    metrics = sorted({part.metric for part in claim.parts.values()} | {BAR_METRIC}, key=list(METRICS).index)
    cells = {}
    for cell_name, cell in runs["cells"].items():
        # the resolved configs (every field of each run) stay in the runs file: the report keeps what was asked
        record = {k: v for k, v in cell.items() if k not in ("seeds", "resolved")}
        if "seeds" in cell:
            seeds, diverged = paired_seeds(runs, [cell_name])
            record["diverged_seeds"] = sorted(int(s) for s in diverged)
            record["means"] = {
                m: _mean_record(seed_values(runs, cell_name, m, seeds), spec.level)
                for m in metrics
                if all(cell["seeds"][str(s)].get(m) is not None for s in seeds)
            }
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
        "origin": claim.origin,
        "setting": claim.setting,
        "differs": claim.differs,
        "seeds": runs["seeds"],
        "parts": parts,
        "cells": cells,
        "regime": claim_regime(cells, bar, regime_cells(claim)),
        "notes": notes,
        "cost": runs["cost"],
        "params": dataclasses.asdict(claim),
    }


def regime_cells(claim: ClaimSpec) -> set[str]:
    """The cells whose regime the claim's quality parts read (each part's regime_cells, else all its cells);
    every cell when no part is on a quality metric."""
    quality = [part for part in claim.parts.values() if part.metric in QUALITY_METRICS]
    if not quality:
        return set(claim.cells)
    return {cell for part in quality for cell in (part.regime_cells or part.cell_names())}


def claim_regime(cells: dict, bar: dict | None, which: set[str] | None = None) -> dict:
    """Whether every cell that ran (of `which`) beats the bar (its upper bound of mean test loss below it)."""
    if bar is None:
        return {"judged": False}
    upper = {
        c: cell["means"][BAR_METRIC]["high"]
        for c, cell in cells.items()
        if BAR_METRIC in cell.get("means", {}) and (which is None or c in which)
    }
    if not upper:
        return {"judged": False}
    failing = verdicts.regime_failures(upper, bar[BAR_METRIC])
    return {"judged": True, "in_regime": not failing, "not_below": failing, "upper": upper, "bar": bar[BAR_METRIC]}


def finish_claim(claim: dict) -> dict:
    """The claim's verdict from its claim parts (after Holm) and its manipulation checks' summary."""
    parts = claim["parts"].values()
    claim["verdict"] = verdicts.combine([p["verdict"] for p in parts if p["role"] == "claim"])
    claim["manipulation"] = verdicts.manipulation_summary([p["verdict"] for p in parts if p["role"] == "manipulation"])
    return claim


def _mean_record(values: list[float], level: float) -> dict:
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    iv = mean_interval(values, level)
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


# ---------------------------------------------------------------- the whole study
def apply_holm(claims: dict, spec: ClaimsParams) -> dict:
    """Holm across the claim parts of every claim that were tested (a p-value; not run and out of
    regime parts are no test): each gets p_holm; a verdict other than inconclusive stands only when
    p_holm < alpha. Returns the family's summary."""
    family = [
        part
        for claim in claims.values()
        for part in claim["parts"].values()
        if part["role"] == "claim"
        and part["verdict"] not in (verdicts.NOT_RUN, verdicts.OUT_OF_REGIME)
        and part.get("p") is not None
    ]
    summary = {"method": spec.familywise, "alpha": spec.alpha, "m": len(family)}
    if spec.familywise != "holm":
        return summary
    for part, adjusted in zip(family, verdicts.holm([p["p"] for p in family])):
        part["p_holm"] = adjusted
        if part["verdict"] in verdicts.DECIDED and not adjusted < spec.alpha:
            part["verdict_before_holm"] = part["verdict"]
            part["verdict"] = verdicts.INCONCLUSIVE
    summary["changed"] = sum("verdict_before_holm" in p for p in family)
    return summary


def power_rows(name: str, claim: ClaimSpec, spec: ClaimsParams, pilot_dir: Path | None, judged: dict) -> dict:
    """Per part: its pilot's paired SD and what it implies (power.part_power), and the paired SD the
    main run observed (after the fact: what the next study can plan with)."""
    path = Path(pilot_dir) / f"{name}.json" if pilot_dir else None
    pilot = read_json(path) if path and path.exists() else {}
    if pilot:
        judged["pilot_cost"] = {**pilot["cost"], "steps": pilot.get("steps"), "seeds": pilot["seeds"]}
    rows = {}
    for part_name, part in claim.parts.items():
        if part.role == "measurement":
            continue
        series = part_series(part, pilot) if pilot else []
        row = part_power(part, spec, series, len(claim.seeds), pilot)
        row["pilot_file"] = str(path) if pilot else None
        observed = judged["parts"][part_name].get("per_seed") or []
        if len(observed) > 1:
            row["observed_sd"] = statistics.stdev(observed)
            row["observed_n"] = len(observed)
        rows[part_name] = row
    return rows


def build_report(
    spec: ClaimsParams, runs_dir: Path, references: Path | None, pilot_dir: Path | None = None, bar: dict | None = None
) -> dict:
    """The details: every claim judged, Holm applied, verdicts combined, power rows. `bar` (a read_bar
    result) replaces reading `references`."""
    bar = bar if bar is not None else read_bar(Path(references), spec.bar_role)
    claims, profiles = {}, set()
    for name, claim in spec.claims.items():
        path = Path(runs_dir) / f"{name}.json"
        if not path.exists():
            raise DataError(f"{path} not found: run the claim first (`moelab claims run --claim {name}`)")
        runs = read_json(path)
        check_same_split(bar, runs)
        profiles.add(runs["profile"])
        claims[name] = {**judge_claim(name, claim, runs, spec, bar), "runs_file": str(path)}
    if len(profiles) > 1:
        raise DataError(f"{runs_dir} mixes profiles {sorted(profiles)}: re-run every claim with the same profile")
    family = apply_holm(claims, spec)
    for name, claim in claims.items():
        finish_claim(claim)
        claim["power"] = power_rows(name, spec.claims[name], spec, pilot_dir, claim)
    return {
        "profile": profiles.pop(),
        "rules": {
            "level": spec.level,
            "alpha": spec.alpha,
            "quality_margin": spec.quality_margin,
            "familywise": family,
            "verdict_codes": verdicts.VERDICT_CODES,
        },
        "bar": {k: v for k, v in bar.items() if k != "data"},
        "budget": dataclasses.asdict(spec.budget),
        "claims": claims,
    }


def metrics_of(details: dict) -> dict:
    """claims.json: numbers only. Per claim its verdict code; per claim part its effect and verdict code
    (a part not run has neither; an effect without an estimate is left out)."""
    out = {}
    for name, claim in details["claims"].items():
        entry: dict = {}
        if claim["verdict"] in verdicts.VERDICT_CODES:
            entry["verdict"] = verdicts.VERDICT_CODES[claim["verdict"]]
        for part_name, part in claim["parts"].items():
            if part["role"] != "claim" or part["verdict"] == verdicts.NOT_RUN:
                continue
            numbers = {"verdict": verdicts.VERDICT_CODES[part["verdict"]]}
            if isinstance(part.get("estimate"), (int, float)) and math.isfinite(part["estimate"]):
                numbers["effect"] = part["estimate"]
            entry[part_name] = numbers
        out[name] = entry
    return out


def write_report(
    spec: ClaimsParams,
    runs_dir: Path,
    json_path: Path,
    md_path: Path,
    plots_dir: Path,
    references: Path | None = None,
    details_path: Path | None = None,
    pilot_dir: Path | None = None,
    bar: dict | None = None,
) -> dict:
    from .plots import write_plots

    details = rounded(build_report(spec, runs_dir, references, pilot_dir, bar))
    write_json(json_path, metrics_of(details))
    write_json(details_path or default_details(json_path), details)
    atomic_write_text(md_path, markdown(details))
    write_plots(details, Path(plots_dir))
    return details


def default_details(json_path: Path) -> Path:
    """metrics/claims.json -> metrics/claims.details.json"""
    path = Path(json_path)
    return path.with_name(f"{path.stem}.details.json")


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
ROLE_TAGS = {"claim": "", "manipulation": " (manipulation check)", "measurement": " (measured)"}


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
    values = part.get("values") or {}
    if part["metric"] in ("train_step_s", "train_tokens_per_s") and part.get("a") in values and part.get("b") in values:
        a, b = (sum(values[c]) / len(values[c]) for c in (part["a"], part["b"]))
        text += f" ({part['a']} / {part['b']} = {a / b:.3f}x)" if b else ""
    return f"{text}, {n}"


def regime_text(claim: dict) -> str:
    regime = claim["regime"]
    if not regime.get("judged"):
        return "–"
    if regime["in_regime"]:
        worst = max(regime["upper"].values())
        return f"yes (every cell's upper bound ≤ {worst:.4g} < bar {regime['bar']:.4g})"
    shown = ", ".join(f"{c} {_num(regime['upper'][c])}" for c in regime["not_below"])
    return f"**no**: {shown} not below the bar {regime['bar']:.4g}"


def verdict_text(claim: dict) -> str:
    text = f"**{claim['verdict']}**"
    if claim.get("manipulation"):
        text += f"<br>{claim['manipulation']}"
    return text


def markdown(report: dict) -> str:
    rules, bar = report["rules"], report["bar"]
    family = rules["familywise"]
    lines = ["# Published claims, re-tested", ""]
    if report["profile"] != "full":
        lines += [f"> **{report['profile']} profile**: a smoke test of the machinery; these verdicts mean nothing.", ""]
    if report["budget"]["status"] != "set":
        lines += ["> **The budget is a placeholder** (claims/params.yaml `budget.status`): set it from scale/.", ""]
    holm = (
        f"Holm's step-down procedure over the {family['m']} claim parts tested (family-wise error ≤ "
        f"{family['alpha']:g}; {family.get('changed', 0)} verdict(s) became inconclusive after it)"
        if family["method"] == "holm"
        else "no family-wise control (familywise: none): each part at its own level"
    )
    bar_ppl = f" (ppl {bar['test_ppl']:.4g})" if "test_ppl" in bar else ""
    lines += [
        f"Effects are paired by seed (cell a - cell b per seed), mean ± half-width of the {rules['level']:.0%} "
        f"Student-t interval; equivalence (TOST) and non-inferiority parts are decided on the "
        f"{1 - 2 * rules['alpha']:.0%} interval against their margin (the quality margin is "
        f"{rules['quality_margin']:g} nats, ppl x{math.exp(rules['quality_margin']):.3f}, unless a part states "
        f"the margin the study can resolve). In regime: every cell's {rules['level']:.0%} upper bound of mean "
        f"test loss below the bar, {bar['name']} (role {bar['role']}) at test loss {bar['test_loss']:.4g} "
        f"nats{bar_ppl}; a quality part whose cells do not "
        f"is out of regime. Manipulation checks (an intervention moves what it optimises) are reported apart "
        f"and never count as reproduced; a claim's verdict combines its claim parts. Family-wise: {holm}. "
        "Rules: claims/params.yaml, moelab/claims/verdicts.py.",
        "",
        "| claim | setting | effect (mean ± 95% CI, n seeds) → verdict | in regime? | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, claim in report["claims"].items():
        origin = "this lab's hypothesis" if claim["origin"] == "lab" else short_source(claim["source"])
        effects = "<br>".join(
            f"{p.get('label') or part_name}{ROLE_TAGS[p['role']]}: {effect_text(p)} → {verdicts.label(p)}"
            for part_name, p in claim["parts"].items()
        )
        lines.append(
            f"| **{name}**: {claim['title']} ({origin}) | {claim['setting']} | {effects} | "
            f"{regime_text(claim)} | {verdict_text(claim)} |"
        )
    lines += ["", "Verdict codes in metrics/claims.json: " + ", ".join(f"{v} = {k}" for k, v in _codes(rules)), ""]
    lines += _power_table(report) + _holm_table(report)
    lines += ["## Details", ""]
    for name, claim in report["claims"].items():
        lines += _details(name, claim)
    lines += _cost(report)
    return "\n".join(lines)


def short_source(source: str) -> str:
    """The citation up to its arXiv id: 'Fedus et al. 2021, Switch Transformers (arXiv 2101.03961)'."""
    end = source.find(")", source.find("(arXiv"))
    return source[: end + 1] if "(arXiv" in source and end > 0 else source


def _codes(rules: dict) -> list[tuple[str, int]]:
    seen: dict[int, list[str]] = {}
    for verdict, code in rules["verdict_codes"].items():
        seen.setdefault(code, []).append(verdict)
    return [(" / ".join(names), code) for code, names in sorted(seen.items(), reverse=True)]


def _power_table(report: dict) -> list[str]:
    lines = [
        "## Power",
        "",
        "Planned from a pilot (claims/pilot/<claim>.json: `moelab claims pilot`) before the main run: the expected "
        "half-width of the interval a part decides on is t · sd / √n (margin parts: the 90% interval; difference "
        "and trend parts: the 95%). n needed: the fewest seeds whose half-width is below the part's target (its "
        "practically relevant margin); resolvable: the half-width with the seeds used, the margin the study can "
        "resolve. Observed: the paired SD of the main run (after the fact).",
        "",
        "| claim / part | pilot paired SD (n, steps) | target | n needed | n used | resolvable at n used | "
        "margin used | observed SD (n) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, claim in report["claims"].items():
        for part_name, row in claim.get("power", {}).items():
            pilot = (
                f"{row['pilot_sd']:.3g} ({row['pilot_n']}, {row.get('pilot_steps')} steps)"
                if row.get("pilot_sd") is not None
                else row.get("note", "–")
            )
            needed = row.get("n_needed", "–") if row.get("pilot_sd") is not None else "–"
            needed = "> 10,000" if needed is None else needed
            resolvable = f"{row['resolvable_at_n_used']:.3g}" if row.get("resolvable_at_n_used") is not None else "–"
            target = f"{row['target']:g}" if row.get("target") is not None else "–"
            margin = f"{row['margin_used']:g}" if row.get("margin_used") is not None else "–"
            observed = f"{row['observed_sd']:.3g} ({row['observed_n']})" if row.get("observed_sd") is not None else "–"
            lines.append(
                f"| {name} / {part_name} | {pilot} | {target} | {needed} | {row['n_used']} | {resolvable} | "
                f"{margin} | {observed} |"
            )
    return [*lines, ""]


def _holm_table(report: dict) -> list[str]:
    family = report["rules"]["familywise"]
    if family["method"] != "holm":
        return ["## Family-wise error", "", "Not controlled (claims/params.yaml familywise: none).", ""]
    lines = [
        "## Family-wise error (Holm)",
        "",
        f"The family: every claim part that was tested ({family['m']}: not run and out-of-regime parts are no "
        "test; manipulation checks and measurements are not claims). Each part enters once, with the p-value of "
        "the verdict its rule reached (difference, trend: the paired t-test, two-sided; non-inferiority and "
        "equivalence: the one-sided test of the side claimed, TOST's larger one; variance ratio: Pitman-Morgan, "
        "two-sided), so its own rule decides exactly at p < "
        f"{family['alpha']:g}; after Holm a verdict other than inconclusive stands only at Holm-adjusted p < "
        f"{family['alpha']:g}.",
        "",
    ]
    if not family["m"]:
        return [*lines, "No claim part was tested (every one out of regime or not run).", ""]
    lines += ["| claim / part | p | Holm p | verdict |", "|---|---|---|---|"]
    for name, claim in report["claims"].items():
        for part_name, part in claim["parts"].items():
            if "p_holm" not in part:
                continue
            changed = f" (was {part['verdict_before_holm']})" if "verdict_before_holm" in part else ""
            lines.append(
                f"| {name} / {part_name} | {part['p']:.3g} | {part['p_holm']:.3g} | {part['verdict']}{changed} |"
            )
    return [*lines, ""]


def _details(name: str, claim: dict) -> list[str]:
    lines = [f"### {name}: {claim['verdict']}", "", f"{claim['title']} ({claim['source']}).", ""]
    if claim.get("differs"):
        lines += [f"Differs from the paper: {claim['differs']}", ""]
    lines += ["| part | role | kind | effect | rule interval | published | verdict |", "|---|---|---|---|---|---|---|"]
    for part_name, part in claim["parts"].items():
        tested = part.get("why", "")
        if part["verdict"] != verdicts.OUT_OF_REGIME:
            if part.get("test_low") is not None:
                tested = f"{part['test_level']:.0%}: [{part['test_low']:+.4g}, {part['test_high']:+.4g}]"
                tested += f", margin {part['margin']:g}"
            elif part.get("low") is not None:
                tested = f"{part['level']:.0%}: [{part['low']:+.4g}, {part['high']:+.4g}]"
                if part.get("threshold") is not None:
                    tested += f", published floor {part['threshold']:.3g}"
        lines.append(
            f"| {part_name} | {part['role']} | {part['kind']} | {effect_text(part)} | {tested} | "
            f"{part.get('published', '')} | {verdicts.label(part)} |"
        )
    metrics = sorted({p["metric"] for p in claim["parts"].values()} | {BAR_METRIC}, key=list(METRICS).index)
    lines += ["", "| cell | " + " | ".join(METRICS[m][0] for m in metrics) + " | FFN FLOPs/token |"]
    lines.append("|---|" + "---|" * (len(metrics) + 1))
    for cell_name, cell in claim["cells"].items():
        if "means" not in cell:
            lines.append(f"| {cell_name} | " + " | ".join("not run" for _ in metrics) + " | – |")
            continue
        shown = [_mean_text(cell["means"][m]) if m in cell["means"] else "–" for m in metrics]
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


def _cost(report: dict) -> list[str]:
    lines = [
        "## Cost",
        "",
        "Wall: the stage's, runs shared with an earlier claim (or its pilot) reused. Compute: the core-seconds its "
        "runs took to train and evaluate, wherever they trained. Pilot: the pilot stage's (claims/pilot).",
        "",
        "| claim | runs | at a time | wall s | compute s | pilot runs | pilot wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, claim in report["claims"].items():
        cost, pilot = claim["cost"], claim.get("pilot_cost") or {}
        pilot_wall = f"{pilot['wall_s']:g}" if "wall_s" in pilot else "–"
        lines.append(
            f"| {name} | {cost['runs']} | {cost['jobs']} | {cost['wall_s']:g} | {cost['compute_s']:g} | "
            f"{pilot.get('runs', '–')} | {pilot_wall} |"
        )
    main = sum(c["cost"]["wall_s"] for c in report["claims"].values())
    pilots = sum((c.get("pilot_cost") or {}).get("wall_s", 0) for c in report["claims"].values())
    lines += [
        "",
        f"Total wall time: {main + pilots:.0f} s ({(main + pilots) / 60:.1f} min): claim stages {main:.0f} s, "
        f"pilots {pilots:.0f} s.",
        "",
    ]
    return lines
