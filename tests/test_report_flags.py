"""moelab.report: per-run flags (one predicted class, dead experts, degenerate outputs) shown and left
out of the aggregates, ranks and comparisons, with the unflagged n; and the comparisons of "What the
data supports": paired t-tests, Holm-adjusted within each family, checked by hand and against scipy
(and statsmodels where it is installed). The synthetic study is tests/test_report.py's."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from moelab.report.data import dead_expert_layers, load, run_flags
from moelab.report.evidence import comparisons, holm, paired_t_p
from moelab.report.tables import report
from test_report import LM_REFERENCES, SHARES, Lab, _column, _summary_md

CLASSIFICATION_REFERENCES = {
    "majority": {"description": "m", "trivial": True, "test_accuracy": 0.55, "test_examples": 100},
    "bow-logreg": {"description": "b", "trivial": False, "test_accuracy": 0.7, "test_examples": 100},
}


@pytest.fixture
def lab(tmp_path, params_file, monkeypatch):
    """Lab(**options) in a fresh working directory (as in tests/test_report.py)."""
    monkeypatch.chdir(tmp_path)
    return lambda **options: Lab(params_file, **options)


# ------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> made non-decreasing: 0.06
    adjusted = holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])
    assert [p < 0.05 for p in adjusted] == [True, False, False]  # only the first is separated
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm([0.02]) == [0.02]


def _step_down_rejects(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's procedure as published: reject the hypotheses of the smallest p-values while
    p_(j) <= alpha / (m - j + 1); stop at the first that is not."""
    m, rejected = len(p_values), [False] * len(p_values)
    for j, i in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        if p_values[i] > alpha / (m - j):
            break
        rejected[i] = True
    return rejected


def test_holm_agrees_with_the_step_down_procedure():
    rng = random.Random(0)
    for m, alpha in itertools.product((1, 2, 3, 5, 8), (0.01, 0.05, 0.1)):
        for _ in range(50):
            p = [rng.random() ** 3 for _ in range(m)]
            assert [q <= alpha for q in holm(p)] == _step_down_rejects(p, alpha), (p, alpha)


def test_holm_agrees_with_statsmodels():
    from statsmodels.stats.multitest import multipletests  # a test requirement (requirements.txt)

    rng = random.Random(1)
    for m in (1, 2, 3, 6, 12):
        p = [rng.random() ** 2 for _ in range(m)]
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_paired_p_value_is_scipy_ttest_rel():
    a, b = [195.0, 224.0, 256.0, 230.0], [200.0, 230.0, 260.0, 229.0]
    assert paired_t_p([x - y for x, y in zip(a, b)]) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert paired_t_p([1.0]) is None  # one pair: no test
    assert paired_t_p([2.0, 2.0, 2.0]) == 0.0 and paired_t_p([0.0, 0.0]) == 1.0  # no spread


def test_comparisons_are_holm_adjusted_within_each_family(lab):
    lab_ = lab(gates=("sparsemax", "softmax-top2", "softmax-soft"))
    dense = [200.0, 230.0, 260.0]  # a seed effect of ±30: only a paired comparison sees a difference of 5
    shifts = {
        "linear-sparsemax-e8": [-6.0, -7.0, -5.0],  # raw p 0.009: x3 = 0.027, separated
        "linear-softmax-top2-e8": [-5.0, -7.0, -3.0],  # raw p 0.049 (its CI excludes 0), x2 = 0.099: not separated
        "linear-softmax-soft-e8": [-20.0, 20.0, -10.0],  # raw p 0.81
    }
    lab_.fill("lm", {"dense": dense} | {n: [d + s for d, s in zip(dense, v)] for n, v in shifts.items()})
    lab_.references("lm", LM_REFERENCES | {"unigram": {**LM_REFERENCES["unigram"], "test_ppl": 4000.0}})
    report(lab_.params, plots_dir=None)
    vs_dense, vs_best = comparisons(load(lab_.params)["lm"])
    raw = [scipy_stats.ttest_rel([d + s for d, s in zip(dense, v)], dense).pvalue for v in shifts.values()]
    assert [c.p for c in vs_dense] == pytest.approx(raw)
    assert [c.p_holm for c in vs_dense] == pytest.approx(holm(raw))
    assert raw[1] < 0.05 and vs_dense[1].difference.excludes_zero()  # per comparison, it would have been claimed
    assert [c.separated for c in vs_dense] == [True, False, False]
    assert [(c.a.name, c.b.name) for c in vs_best] == [
        ("linear-sparsemax-e8", "linear-softmax-top2-e8"),
        ("linear-sparsemax-e8", "linear-softmax-soft-e8"),
    ]  # the best mean (224) against the other MoE variants: a family of its own

    supports = _summary_md().split("## What the data supports")[1]
    assert "fixed on 2026-12-05, before the study at this recipe was run" in supports
    claim = re.search(
        r"linear-sparsemax-e8 beats dense on perplexity \(lower\): linear-sparsemax-e8 − dense = -6 "
        r"\[(\S+), (\S+)\], Holm-adjusted p = (\S+), n = 3 seeds",
        supports,
    )
    assert claim, supports
    ci = scipy_stats.ttest_rel(
        *[[d + s for d, s in zip(dense, shifts["linear-sparsemax-e8"])], dense]
    ).confidence_interval()
    assert (float(claim.group(1)), float(claim.group(2))) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert float(claim.group(3)) == pytest.approx(holm(raw)[0], rel=1e-2)
    assert "linear-softmax-top2-e8 beats" not in supports and "beats linear-softmax-top2-e8" not in supports
    assert "MoE vs dense (1 of 3 separated, Holm-adjusted p < 0.05)" in supports
    row = next(line for line in supports.splitlines() if line.startswith("| vs dense | linear-softmax-top2-e8 |"))
    assert row.endswith(f"| {raw[1]:.3g} | {holm(raw)[1]:.3g} | no |")  # raw p and Holm p side by side


def test_comparisons_pair_unflagged_seeds_only(lab):
    lab_ = lab(gates=("sparsemax",))
    lab_.fill("lm", {"dense": [110.0, 120.0, 130.0], "linear-sparsemax-e8": [100.0, 110.0, 1.0]})
    dead = [{"module": "blocks.1.ffn", "expert_share": [0.9, 0.1, 0, 0, 0, 0, 0, 0]}]
    lab_.write_run("lm", "linear-sparsemax-e8", 2, 1.0, layers=dead)  # seed 2: flagged, left out
    lab_.references("lm", LM_REFERENCES)
    (vs_dense,), _ = comparisons(load(lab_.params)["lm"])
    assert vs_dense.difference.n == 2 and vs_dense.difference.mean == pytest.approx(-10.0)


# ------------------------------------------------------------------ the three flags
def test_flag_rules():
    assert run_flags({"test_top_class_share": 0.99}, []) == ("one class",)
    assert run_flags({"test_top_class_share": 0.98}, []) == ()
    assert run_flags({"test_degenerate_fraction": 0.51}, []) == ("degenerate outputs",)
    assert run_flags({"test_degenerate_fraction": 0.5}, []) == ()
    # 8 experts: dead below 1/80 = 0.0125; dead experts in a layer: more than half (5 of 8) dead
    five = [{"module": "blocks.1.ffn", "expert_share": [0.4, 0.3, 0.3, 0.0, 0.0, 0.0, 0.012, 0.0]}]
    four = [{"module": "blocks.1.ffn", "expert_share": [0.3, 0.3, 0.2, 0.1875, 0.0, 0.0, 0.0125, 0.0]}]  # 1/80: alive
    assert dead_expert_layers(five) == ["layer 1"] and dead_expert_layers(four) == []
    summariser = [{"module": "hf.encoder.block.0.layer.1.mlp.moe", "expert_share": SHARES}] + [
        {"module": "hf.decoder.block.0.layer.2.mlp.moe", "expert_share": five[0]["expert_share"]}
    ]
    assert run_flags({}, summariser) == ("dead experts (decoder 0)",)


def test_one_class_run_is_shown_and_left_out(lab):
    lab_ = lab(tasks=("classification",), gates=("sparsemax",))
    lab_.fill("classification", {"linear-sparsemax-e8": [0.80, 0.5, 0.82], "dense": [0.75, 0.76, 0.77]})
    lab_.write_run("classification", "linear-sparsemax-e8", 1, 0.5, test_top_class_share=0.995)
    lab_.references("classification", CLASSIFICATION_REFERENCES)
    summary = report(lab_.params, plots_dir=None)
    md = _summary_md()
    variant = summary["classification"]["variants"]["linear-sparsemax-e8"]
    assert variant["metrics"]["test_accuracy"]["mean"] == pytest.approx(0.81)  # seeds 0 and 2
    assert variant["metrics"]["test_accuracy"]["n"] == 2 and variant["every_run"]["test_accuracy"]["n"] == 3
    assert variant["flags"] == {"s1": ["one class"]}
    assert _column(md, "classification", "linear-sparsemax-e8", "seeds") == "2 of 3"
    assert _column(md, "classification", "linear-sparsemax-e8", "flags") == "s1: one class, ▽"
    assert "linear-sparsemax-e8: n = 2 of 3 (flagged runs left out)." in md
    headline = json.loads(Path("metrics/study.json").read_text())["classification"]["linear-sparsemax-e8"]
    assert headline["flagged_runs"] == 1 and headline["n"] == 2 and headline["test_accuracy"] == pytest.approx(0.81)


def test_dead_experts_run_is_shown_and_left_out(lab):
    lab_ = lab(gates=("sparsemax",))
    lab_.fill("lm", {"linear-sparsemax-e8": [100.0, 101.0, 102.0], "dense": [120.0, 121.0, 122.0]})
    dead = [
        {"module": "blocks.0.ffn", "expert_share": SHARES},
        {"module": "blocks.1.ffn", "expert_share": [1.0] + [0] * 7},
    ]
    lab_.write_run("lm", "linear-sparsemax-e8", 0, 100.0, layers=dead)
    lab_.references("lm", LM_REFERENCES)
    report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert _column(md, "lm", "linear-sparsemax-e8", "flags") == "s0: dead experts (layer 1)"
    assert _column(md, "lm", "linear-sparsemax-e8", "seeds") == "2 of 3"
    assert _column(md, "lm", "linear-sparsemax-e8", "perplexity").startswith("**101.5 ± ")


def test_degenerate_summaries_are_shown_and_left_out(lab):
    lab_ = lab(tasks=("summarization",), gates=("sparsemax",))
    lab_.fill("summarization", {"linear-sparsemax-e8": [0.30, 0.31, 0.32], "dense": [0.25, 0.26, 0.27]})
    quality = {"test_rougeL": 0.02, "test_examples": 64, "test_degenerate_fraction": 0.9}
    lab_.write_run("summarization", "linear-sparsemax-e8", 2, quality)
    lead = {"description": "lead", "test_rougeL": 0.2, "test_examples": 64}
    lab_.references("summarization", {"lead-7": {**lead, "trivial": True}, "lead-9-val": {**lead, "test_rougeL": 0.22}})
    report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert _column(md, "summarization", "linear-sparsemax-e8", "flags") == "s2: degenerate outputs, ▽"
    assert _column(md, "summarization", "linear-sparsemax-e8", "ROUGE-L").startswith("0.305 ± ")
    task = load(lab_.params)["summarization"]
    assert task.n(lab_.variant("summarization", "linear-sparsemax-e8")) == 2


def test_a_variant_with_every_run_flagged_is_shown_but_not_ranked(lab):
    lab_ = lab(tasks=("classification",), gates=("sparsemax",))
    lab_.fill("classification", {"linear-sparsemax-e8": [0.55, 0.55, 0.55]}, test_top_class_share=1.0)
    lab_.fill("classification", {"dense": [0.75, 0.76, 0.77]})
    lab_.references("classification", CLASSIFICATION_REFERENCES)
    report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert _column(md, "classification", "linear-sparsemax-e8", "accuracy") == "(0.55 ± 0)"
    assert _column(md, "classification", "linear-sparsemax-e8", "seeds") == "0 of 3"
    assert "every run flagged: its numbers (in parentheses) are over all 3" in md
    task = load(lab_.params)["classification"]
    assert not task.ranked(lab_.variant("classification", "linear-sparsemax-e8"))
    headline = json.loads(Path("metrics/study.json").read_text())["classification"]["linear-sparsemax-e8"]
    assert headline == {"flagged_runs": 3, "n": 0}  # no mean of flagged runs in the headline
