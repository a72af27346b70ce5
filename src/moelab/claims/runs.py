"""Reading a claim's runs file (claims/metrics/<claim>.json, or a pilot's claims/pilot/<claim>.json):
the cells, each seed's metrics, which seeds pair up, and a part's per-seed effects.

A runs file: {"claim", "profile", "seeds", "data" (the resolved data config), "cells": {cell:
{"settings", "resolved", "run_key", ..., "seeds": {seed: metrics | {"diverged": why}}}}, "cost"}.
"""

from __future__ import annotations

import math

from ..errors import DataError
from .spec import PartSpec


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


def has_runs(runs: dict, part: PartSpec) -> bool:
    return all("seeds" in runs["cells"].get(c, {}) for c in part.cell_names())


def part_series(part: PartSpec, runs: dict) -> list[float]:
    """The per-seed quantity a part's interval is over: a - b (difference, equivalence,
    non-inferiority) or the least-squares slope against log2(x) (trend); [] for a variance ratio
    (its interval is not over a per-seed quantity) or when no seed finished in every cell."""
    from ..stats import least_squares_slope

    if part.kind == "variance_ratio" or not has_runs(runs, part):
        return []
    seeds, _ = paired_seeds(runs, part.cell_names())
    if not seeds:
        return []
    values = {c: seed_values(runs, c, part.metric, seeds) for c in part.cell_names()}
    if part.kind == "trend":
        log_x = [math.log2(setting_of(runs["cells"][c], part.x)) for c in part.cells]
        return [least_squares_slope(log_x, [values[c][i] for c in part.cells]) for i in range(len(seeds))]
    return [a - b for a, b in zip(values[part.a], values[part.b])]
