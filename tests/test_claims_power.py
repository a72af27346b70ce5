"""Power before running: the half-width, seeds-needed and resolvable-margin functions against hand
computations with scipy's t quantiles, a part's power row from a hand-made pilot file, and
`moelab claims plan` (runs, sharing, cost) from the params."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats as sp

from conftest import ROOT
from moelab.claims import power

MARGIN = 0.0198  # ln(1.02): the quality margin of claims/params.yaml


def half90(sd: float, n: int) -> float:
    return sp.t.ppf(0.95, n - 1) * sd / math.sqrt(n)


def test_half_width_by_hand():
    assert power.half_width(0.05, 8, 0.90) == pytest.approx(half90(0.05, 8))
    assert power.half_width(0.05, 8, 0.95) == pytest.approx(sp.t.ppf(0.975, 7) * 0.05 / math.sqrt(8))
    assert power.half_width(0.05, 1, 0.90) == math.inf


def test_the_issues_numbers_by_hand():
    """Issue 20: paired SDs 0.042-0.082 nats with 8 seeds give 90% half-widths 0.028-0.055 > 0.0198."""
    assert sp.t.ppf(0.95, 7) == pytest.approx(1.894579, rel=1e-6)
    assert power.resolvable(0.042, 8, 0.90) == pytest.approx(1.894579 * 0.042 / math.sqrt(8), rel=1e-6)
    assert power.resolvable(0.042, 8, 0.90) == pytest.approx(0.0281, abs=5e-5)
    assert power.resolvable(0.082, 8, 0.90) == pytest.approx(0.0549, abs=5e-5)
    assert power.resolvable(0.042, 8, 0.90) > MARGIN


def test_n_needed_by_hand():
    # n = 19: 1.734 x 0.05 / sqrt(19) = 0.01989 >= 0.0198; n = 20: 1.729 x 0.05 / sqrt(20) = 0.01933 < 0.0198
    assert half90(0.05, 19) > MARGIN > half90(0.05, 20)
    assert power.n_needed(0.05, MARGIN, 0.90) == 20
    for sd in (0.01, 0.042, 0.082, 0.2):  # the first n below the target, by a plain loop
        first = next(n for n in range(2, 100_000) if half90(sd, n) < MARGIN)
        assert power.n_needed(sd, MARGIN, 0.90) == first
    assert power.n_needed(0.001, MARGIN, 0.90) == 2
    assert power.n_needed(10.0, MARGIN, 0.90, n_max=100) is None  # beyond any budget
    with pytest.raises(ValueError):
        power.n_needed(0.05, 0.0, 0.90)


def test_part_power_row_from_a_pilot():
    from moelab.claims.runs import part_series
    from moelab.claims.spec import PartSpec, load_claims

    spec = load_claims(ROOT / "claims" / "params.yaml")
    pilot = {
        "claim": "c",
        "steps": 460,
        "seeds": [0, 1, 2],
        "cells": {
            "a": {"seeds": {"0": {"test_loss": 4.00}, "1": {"test_loss": 4.05}, "2": {"test_loss": 3.98}}},
            "b": {"seeds": {"0": {"test_loss": 4.02}, "1": {"test_loss": 4.00}, "2": {"test_loss": 4.01}}},
        },
    }
    ni = PartSpec(kind="non_inferiority", metric="test_loss", a="a", b="b", direction="lower", margin=MARGIN)
    series = part_series(ni, pilot)
    assert series == pytest.approx([-0.02, 0.05, -0.03])
    sd = math.sqrt(sum((v - 0.0) ** 2 for v in [-0.02, 0.05, -0.03]) / 2)  # mean 0
    row = power.part_power(ni, spec, series, 8, pilot)
    assert row["pilot_sd"] == pytest.approx(sd) and row["pilot_n"] == 3 and row["level"] == pytest.approx(0.90)
    assert row["n_needed"] == power.n_needed(sd, MARGIN, 0.90) and row["n_needed"] > 8
    assert row["resolvable_at_n_used"] == pytest.approx(half90(sd, 8)) and not row["margin_resolvable"]
    assert row["reaches_target"] is False and row["suggested_margin"] == math.ceil(half90(sd, 8) * 1e4) / 1e4
    # a widened margin keeps the 2% as its target: n needed is for the target, resolvable against the margin used
    wide = PartSpec(
        kind="non_inferiority", metric="test_loss", a="a", b="b", direction="lower", margin=0.05, target_margin=MARGIN
    )
    row = power.part_power(wide, spec, series, 8, pilot)
    assert row["target"] == MARGIN and row["margin_used"] == 0.05 and row["margin_resolvable"]
    diff = PartSpec(kind="difference", metric="test_loss", a="a", b="b", direction="lower")
    row = power.part_power(diff, spec, series, 8, pilot)
    assert row["level"] == 0.95 and "n_needed" not in row  # no margin: only what n seeds resolve
    assert row["resolvable_at_n_used"] == pytest.approx(sp.t.ppf(0.975, 7) * sd / math.sqrt(8))


def test_plan_counts_runs_sharing_and_cost():
    from moelab.claims.plan import build_plan
    from moelab.claims.spec import load_claims
    from moelab.config import read_yaml

    spec = load_claims(ROOT / "claims" / "params.yaml")
    base = read_yaml(ROOT / "params.yaml")
    names = ["moe-vs-dense", "aux-loss"]
    plan = build_plan(spec, names, base, s_per_step=0.1, eval_s=5.0, jobs=2, pilot_dir=ROOT / "no-such-dir")
    seeds, pilot = len(spec.claims["moe-vs-dense"].seeds), len(spec.pilot.seeds)
    rows = plan["claims"]
    assert rows["moe-vs-dense"]["runs"] == 2 * seeds and rows["moe-vs-dense"]["pilot_runs"] == 2 * pilot
    # aux-loss's `aux` cell is moe-vs-dense's `moe` (one config): only its `none` cell trains anew
    assert rows["aux-loss"]["new"] == seeds - pilot
    distinct = 2 * seeds + seeds  # moe, dense, none
    assert plan["distinct_trained_runs"] == distinct
    steps = spec.budget.train["steps"]
    evaluations = 2 * (2 * pilot + 2 * seeds)  # every stage evaluates its runs, pilots included
    assert plan["runs"] == evaluations
    assert plan["compute_s"] == pytest.approx(distinct * steps * 0.1 + evaluations * 5.0)
    assert plan["wall_s"] == pytest.approx(plan["compute_s"] / 2)
    unpriced = build_plan(spec, names, base, s_per_step=None, eval_s=5.0, jobs=2, pilot_dir=ROOT / "no-such-dir")
    assert unpriced["compute_s"] is None and unpriced["unpriced_configs"]


def test_a_shorter_pilot_prices_the_full_runs(tmp_path):
    """The pilot's measured seconds per step price every run of the same model and batch, whatever its steps."""
    from moelab.claims.plan import build_plan
    from moelab.claims.spec import cell_record, load_claims, plan_claim
    from moelab.config import read_yaml

    spec = load_claims(ROOT / "claims" / "params.yaml")
    base = read_yaml(ROOT / "params.yaml")
    short = plan_claim(spec, "moe-vs-dense", base, seeds=[0, 1], steps=5, profile="pilot")
    cells = {}
    for name, cell in short.cells.items():
        record = cell_record(cell)
        record["seeds"] = {str(s): {"test_loss": 5.0, "train_step_s": 0.2, "evaluate_s": 3.0} for s in cell.runs}
        cells[name] = record
    pilot = {"claim": "moe-vs-dense", "profile": "pilot", "seeds": [0, 1], "steps": 5, "cells": cells}
    (tmp_path / "moe-vs-dense.json").write_text(json.dumps(pilot))
    plan = build_plan(spec, ["moe-vs-dense"], base, s_per_step=None, eval_s=99.0, jobs=2, pilot_dir=tmp_path)
    assert plan["unpriced_configs"] == [] and plan["measured_configs"] == 2
    steps = spec.budget.train["steps"]
    assert plan["compute_s"] == pytest.approx(plan["distinct_trained_runs"] * steps * 0.2 + plan["runs"] * 3.0)


def test_sd_upper_limit_by_hand():
    # 3 pilot seeds: 2 degrees of freedom, chi2_0.2(2) = -2 ln(0.8) = 0.4463: the 80% upper limit is sqrt(2 / 0.4463) sd
    assert sp.chi2.ppf(0.2, 2) == pytest.approx(-2 * math.log(0.8))
    assert power.sd_upper(0.05, 3) == pytest.approx(0.05 * math.sqrt(2 / (-2 * math.log(0.8))))
    assert power.sd_upper(0.05, 3) / 0.05 == pytest.approx(2.117, abs=1e-3)
