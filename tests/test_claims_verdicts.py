"""The claims study's verdict names and rules against hand-made runs files and hand computations:
manipulation checks (passed / failed / inconclusive, never reproduced), out of regime by the bar,
effect absent at this scale, the p-values each rule decides on, Holm by hand, and how a claim
combines its claim parts."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats as sp

from moelab.claims import verdicts
from moelab.claims.verdicts import (
    ABSENT,
    EQUIVALENT,
    FAILED,
    INCONCLUSIVE,
    MEASURED,
    NOT_RUN,
    OUT_OF_REGIME,
    PASSED,
    REFUTED,
    REPRODUCED,
    UNDECIDED,
)
from moelab.errors import DataError

BAR = {"name": "kn-bigram", "role": "bar", "test_loss": 4.16, "path": "refs.json"}


@pytest.fixture(scope="module")
def spec():
    from conftest import ROOT
    from moelab.claims.spec import load_claims

    return load_claims(ROOT / "claims" / "params.yaml")


def runs_file(cells: dict[str, dict[str, list[float]]], seeds=(0, 1, 2)) -> dict:
    """A hand-made runs file: cells -> metric -> per-seed values (aligned with `seeds`)."""
    out = {}
    for cell, metrics in cells.items():
        per_seed = {str(s): {m: values[i] for m, values in metrics.items()} for i, s in enumerate(seeds)}
        out[cell] = {"seeds": per_seed}
    return {"claim": "c", "profile": "full", "seeds": list(seeds), "cells": out}


def part(**kw):
    from moelab.claims.spec import PartSpec

    return PartSpec(**kw)


def upper95(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean + sp.t.ppf(0.975, n - 1) * s / math.sqrt(n)


# ------------------------------------------------------------------ manipulation checks
def test_manipulation_parts_read_passed_failed_inconclusive_never_reproduced(spec):
    from moelab.claims.report import judge_part

    runs = runs_file({"a": {"load_cv": [0.2, 0.25, 0.3]}, "b": {"load_cv": [1.2, 1.3, 1.1]}})  # a - b: -1, -1.05, -0.8
    lower = judge_part(
        part(kind="difference", metric="load_cv", a="a", b="b", direction="lower", role="manipulation"), runs, spec, BAR
    )
    assert lower["rule_verdict"] == REPRODUCED and lower["verdict"] == PASSED
    higher = judge_part(
        part(kind="difference", metric="load_cv", a="a", b="b", direction="higher", role="manipulation"),
        runs,
        spec,
        BAR,
    )
    assert higher["verdict"] == FAILED
    noisy = runs_file({"a": {"load_cv": [1.0, 2.0, 3.0]}, "b": {"load_cv": [2.0, 2.0, 2.0]}})
    undecided = judge_part(
        part(kind="difference", metric="load_cv", a="a", b="b", direction="lower", role="manipulation"),
        noisy,
        spec,
        BAR,
    )
    assert undecided["verdict"] == UNDECIDED
    # not a quality metric: the bar does not apply (load CV of 0.2 says nothing about the LM's regime)
    assert "regime" not in lower
    assert verdicts.for_role(EQUIVALENT, "manipulation") == PASSED
    assert verdicts.for_role(REPRODUCED, "measurement") == MEASURED


def test_a_claims_verdict_combines_only_its_claim_parts():
    from moelab.claims.report import finish_claim

    claim = {
        "parts": {
            "checks": {"role": "manipulation", "verdict": PASSED},
            "speed": {"role": "measurement", "verdict": MEASURED},
            "cost": {"role": "claim", "verdict": INCONCLUSIVE},
        }
    }
    finished = finish_claim(claim)
    assert (
        finished["verdict"] == INCONCLUSIVE and finished["manipulation"] == PASSED
    )  # a passed check is no reproduction
    claim["parts"]["cost"]["verdict"] = REPRODUCED
    claim["parts"]["checks"]["verdict"] = FAILED
    assert finish_claim(claim)["verdict"] == REPRODUCED and claim["manipulation"] == FAILED


def test_combine_parts():
    assert verdicts.combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert verdicts.combine([EQUIVALENT, EQUIVALENT, NOT_RUN]) == EQUIVALENT
    assert verdicts.combine([REPRODUCED, EQUIVALENT]) == REPRODUCED
    assert verdicts.combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert verdicts.combine([REPRODUCED, REFUTED, INCONCLUSIVE]) == REFUTED
    assert verdicts.combine([REPRODUCED, OUT_OF_REGIME]) == OUT_OF_REGIME
    assert verdicts.combine([INCONCLUSIVE, OUT_OF_REGIME]) == OUT_OF_REGIME  # never inconclusive
    assert verdicts.combine([REFUTED, OUT_OF_REGIME]) == REFUTED  # an in-regime refutation still stands
    assert verdicts.combine([ABSENT, REPRODUCED]) == ABSENT
    assert verdicts.combine([NOT_RUN, NOT_RUN]) == NOT_RUN
    assert verdicts.manipulation_summary([]) is None
    assert verdicts.manipulation_summary([PASSED, UNDECIDED]) == UNDECIDED


# ------------------------------------------------------------------ out of regime
def test_out_of_regime_by_the_bar_by_hand(spec):
    from moelab.claims.report import judge_part

    a, b = [4.0, 4.1, 4.2], [3.5, 3.6, 3.7]  # a - b = 0.5 each seed: reproduced/refuted by the rule alone
    assert upper95(a) == pytest.approx(4.1 + 4.302653 * 0.1 / math.sqrt(3), rel=1e-6)  # 4.348 >= 4.16
    runs = runs_file({"a": {"test_loss": a}, "b": {"test_loss": b}})
    quality = part(kind="difference", metric="test_loss", a="b", b="a", direction="lower")
    judged = judge_part(quality, runs, spec, BAR)
    assert judged["rule_verdict"] == REPRODUCED and judged["verdict"] == OUT_OF_REGIME
    assert judged["regime"]["not_below"] == ["a"] and judged["regime"]["upper"]["a"] == pytest.approx(upper95(a))
    above = judge_part(quality, runs, spec, {**BAR, "test_loss": 4.35})  # 4.348 < 4.35: both cells beat it
    assert above["verdict"] == REPRODUCED and above["regime"]["not_below"] == []
    at = judge_part(quality, runs, spec, {**BAR, "test_loss": upper95(a)})  # equal is not below
    assert at["verdict"] == OUT_OF_REGIME
    # the cells that decide the regime may be named (init-scale: not the cell expected to be far worse)
    only_b = part(kind="difference", metric="test_loss", a="b", b="a", direction="lower", regime_cells=["b"])
    assert judge_part(only_b, runs, spec, BAR)["verdict"] == REPRODUCED
    # an inconclusive difference is still decided out of regime, first (never inconclusive)
    noisy = runs_file({"a": {"test_loss": [4.0, 4.3, 4.1]}, "b": {"test_loss": [4.2, 4.0, 4.3]}})
    assert judge_part(quality, noisy, spec, BAR)["verdict"] == OUT_OF_REGIME
    # a non-inferiority (manipulation or claim) on test loss, and a cell with one finished seed
    one = runs_file({"a": {"test_loss": [3.0, 3.1, 3.2]}, "b": {"test_loss": [3.0, 3.1, 3.2]}})
    one["cells"]["b"]["seeds"]["1"] = {"diverged": "step 3: nan"}
    one["cells"]["b"]["seeds"]["2"] = {"diverged": "step 3: nan"}
    ni = part(kind="non_inferiority", metric="test_loss", a="a", b="b", direction="lower", margin=0.02)
    assert judge_part(ni, one, spec, BAR)["verdict"] == OUT_OF_REGIME  # b has no interval: cannot show it
    # every seed diverged in some cell: no pair to test, and no interval to show the regime: out of regime too
    one["cells"]["b"]["seeds"]["0"] = {"diverged": "step 3: nan"}
    gone = judge_part(ni, one, spec, BAR)
    assert gone["verdict"] == OUT_OF_REGIME and gone["n"] == 0


def test_read_bar_and_same_split(tmp_path):
    from moelab.claims.report import check_same_split, read_bar

    refs = {
        "unigram": {"role": "trivial", "test_loss": 6.1},
        "kn-bigram": {"role": "bar", "test_loss": 4.16, "test_ppl": 64.1},
        "kn-trigram": {"role": "context", "test_loss": 3.63},
    }
    path = tmp_path / "references.json"
    path.write_text(json.dumps(refs))
    data = {"source": "shakespeare", "vocab_size": 2048, "seq_len": 64}
    (tmp_path / "references.meta.json").write_text(json.dumps({"config": {"data": data}}))
    bar = read_bar(path)
    assert bar["name"] == "kn-bigram" and bar["test_loss"] == 4.16 and bar["data"] == data
    check_same_split(bar, {"claim": "c", "data": data})
    with pytest.raises(DataError, match="vocab_size"):
        check_same_split(bar, {"claim": "c", "data": {**data, "vocab_size": 300}})
    path.write_text(json.dumps({**refs, "kn-trigram": {"role": "bar", "test_loss": 3.63}}))
    with pytest.raises(DataError, match="exactly one row of role 'bar'"):
        read_bar(path)
    with pytest.raises(DataError, match="references@lm"):
        read_bar(tmp_path / "missing.json")


# ------------------------------------------------------------------ effect absent at this scale
def test_published_ratio_floor_by_hand():
    # Switch Table 3: std 0.68 vs 0.01 over 3 seeds each, printed to 0.01; F(2, 2) has cdf x / (1 + x): its
    # 0.975 quantile is 39 exactly
    assert sp.f.ppf(0.975, 2, 2) == pytest.approx(39.0)
    floor = verdicts.published_ratio_floor(0.68, 0.01, 3, 3, rounding=0.005)
    assert floor == pytest.approx((0.675 / 0.015) ** 2 / 39.0) and floor == pytest.approx(51.923, rel=1e-4)
    assert verdicts.published_ratio_floor(0.68, 0.01, 3, 3) == pytest.approx(4624 / 39.0)


def test_effect_absent_at_this_scale_by_hand():
    # uncorrelated paired seeds (orthogonal +-1 patterns), var ratio 1.44, n = 12: K = 1 + 2 t^2 / 10
    h1 = [1.0] * 6 + [-1.0] * 6
    h2 = [1.0, -1.0] * 6
    a, b = [1.2 * v for v in h1], h2
    t = sp.t.ppf(0.975, 10)
    k = 1 + 2 * t * t / 10
    low, high = 1.44 * (k - math.sqrt(k * k - 1)), 1.44 * (k + math.sqrt(k * k - 1))
    assert low < 1 < high and high == pytest.approx(5.352, rel=1e-3)
    floor = verdicts.published_ratio_floor(0.68, 0.01, 3, 3, rounding=0.005)
    absent = verdicts.variance_ratio(a, b, "higher", absent_below=floor)
    assert (absent.low, absent.high) == (pytest.approx(low), pytest.approx(high))
    assert absent.verdict == ABSENT and absent.threshold == pytest.approx(floor)
    assert absent.p == pytest.approx(verdicts.pitman_morgan_p(a, b, floor)) and absent.p < 0.05
    assert verdicts.variance_ratio(a, b, "higher", absent_below=4.0).verdict == INCONCLUSIVE  # 5.35 > 4
    assert verdicts.variance_ratio(a, b, "higher").verdict == INCONCLUSIVE  # no published floor: no such verdict
    # an interval above 1 is reproduced whatever the floor
    wide, narrow = [10.0, -10.0, 10.0, -10.0], [1.0, 1.0, -1.0, -1.0]
    assert verdicts.variance_ratio(wide, narrow, "higher", absent_below=floor).verdict == REPRODUCED


def test_pitman_morgan_p_is_the_interval_inverted():
    """p at the interval's ends is 1 - level: the interval is the set of ratios the test does not reject."""
    from moelab.stats import paired_variance_ratio

    a = [0.3, -0.1, 0.5, 0.2, -0.4, 0.1, 0.0, 0.6, -0.2, 0.3]
    b = [0.1, 0.0, 0.2, 0.1, -0.1, 0.05, -0.05, 0.1, 0.0, 0.15]
    iv = paired_variance_ratio(a, b, 0.95)
    assert verdicts.pitman_morgan_p(a, b, iv.low) == pytest.approx(0.05, abs=1e-6)
    assert verdicts.pitman_morgan_p(a, b, iv.high) == pytest.approx(0.05, abs=1e-6)
    assert verdicts.pitman_morgan_p(a, b, iv.ratio) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ p-values: each rule decides at p < alpha
DATASETS = [
    [-0.03, -0.01, -0.02, -0.04, -0.015],
    [0.01, 0.0, 0.02, -0.01, 0.03, 0.015],
    [0.05, 0.02, 0.03, 0.04],
    [0.0, 0.2, -0.2],
    [0.012, 0.018, 0.009, 0.021, 0.015, 0.011, 0.017, 0.014],
]


@pytest.mark.parametrize("diffs", DATASETS)
def test_p_values_against_scipy_and_the_interval_rules(diffs):
    zeros = [0.0] * len(diffs)
    margin = 0.02
    d = verdicts.difference(diffs, zeros, "lower")
    assert d.p == pytest.approx(sp.ttest_1samp(diffs, 0.0).pvalue)
    assert (d.verdict != INCONCLUSIVE) == (d.p < 0.05)
    ni = verdicts.non_inferiority(diffs, zeros, margin, "lower")
    below = sp.ttest_1samp(diffs, margin, alternative="less").pvalue
    above = sp.ttest_1samp(diffs, margin, alternative="greater").pvalue
    assert ni.p == pytest.approx({REPRODUCED: below, REFUTED: above}.get(ni.verdict, min(below, above)))
    assert (ni.verdict != INCONCLUSIVE) == (ni.p < 0.05)
    eq = verdicts.equivalence(diffs, zeros, margin)
    tost = max(
        sp.ttest_1samp(diffs, -margin, alternative="greater").pvalue,
        sp.ttest_1samp(diffs, margin, alternative="less").pvalue,
    )
    if eq.verdict != REFUTED:
        assert eq.p == pytest.approx(tost)
    assert (eq.verdict != INCONCLUSIVE) == (eq.p < 0.05)


# ------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (monotone); 0.2 x 1 = 0.2
    assert verdicts.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert verdicts.holm([0.5]) == [0.5]
    assert verdicts.holm([0.6, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_over_the_claim_parts_of_the_study(spec):
    from moelab.claims.report import apply_holm, finish_claim

    def p(verdict, pval, role="claim"):
        return {"role": role, "verdict": verdict, "p": pval}

    claims = {
        "x": {
            "parts": {"one": p(REPRODUCED, 0.01), "two": p(REPRODUCED, 0.04), "check": p(PASSED, 0.001, "manipulation")}
        },
        "y": {"parts": {"three": p(INCONCLUSIVE, 0.5), "far": p(OUT_OF_REGIME, 0.0001), "gone": p(NOT_RUN, None)}},
    }
    family = apply_holm(claims, spec)
    assert family["m"] == 3  # one, two, three: the manipulation check, out-of-regime and not-run parts are no test
    parts = {**claims["x"]["parts"], **claims["y"]["parts"]}
    # m = 3: 0.01 x 3 = 0.03; 0.04 x 2 = 0.08; 0.5 x 1 = 0.5
    assert parts["one"]["p_holm"] == pytest.approx(0.03) and parts["one"]["verdict"] == REPRODUCED
    assert parts["two"]["p_holm"] == pytest.approx(0.08) and parts["two"]["verdict"] == INCONCLUSIVE
    assert parts["two"]["verdict_before_holm"] == REPRODUCED and family["changed"] == 1
    assert verdicts.label(parts["two"]) == f"{INCONCLUSIVE} ({REPRODUCED} before Holm: p 0.04, Holm p 0.08)"
    assert verdicts.label(parts["one"]) == REPRODUCED and verdicts.label(parts["far"]) == OUT_OF_REGIME
    assert "p_holm" not in parts["check"] and "p_holm" not in parts["far"]
    assert finish_claim(claims["x"])["verdict"] == INCONCLUSIVE
    assert finish_claim(claims["y"])["verdict"] == OUT_OF_REGIME
