"""Tests for moelab.report (intervals, best/tie marking, summary.json nesting) and moelab.plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moelab.report.plots import FIGURES, pareto_front
from moelab.report.tables import describe, mark_column, markdown, report, t95


def cell(mean: float, ci: float | None, n: int = 3) -> dict:
    return {"mean": mean, "std": 0.0, "ci95": ci, "n": n}


# ------------------------------------------------------------------ statistics
def test_t_interval_matches_hand_computation():
    d = describe([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["n"] == 3
    assert d["std"] == pytest.approx(1.0)  # sample std, n - 1
    assert d["ci95"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # t_{0.975, 2} = 4.303


def test_single_seed_has_no_interval():
    d = describe([5.0])
    assert d == {"mean": 5.0, "std": 0.0, "ci95": None, "n": 1}


def test_t95_table():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(9) == 2.262
    assert t95(12) == 2.228  # between table entries: the next smaller df (conservative)
    assert t95(100) == 1.96


# ------------------------------------------------------------------ marking
def test_best_claimed_only_when_separated():
    # lower is better; 1 ± 0.1 does not overlap 2 ± 0.1 or 3 ± 0.1
    assert mark_column([cell(2, 0.1), cell(1, 0.1), cell(3, 0.1)], lower_is_better=True) == [None, "best", None]
    # higher is better
    assert mark_column([cell(2, 0.1), cell(1, 0.1), cell(3, 0.1)], lower_is_better=False) == [None, None, "best"]


def test_overlapping_runner_up_is_a_tie():
    marks = mark_column([cell(1.0, 0.5), cell(1.4, 0.5), cell(5.0, 0.1)], lower_is_better=True)
    assert marks == ["tie", "tie", None]


def test_n1_is_never_claimed_best():
    marks = mark_column([cell(1.0, None, 1), cell(2.0, None, 1)], lower_is_better=True)
    assert marks == ["lead", None]
    # one cell without an interval is enough to withhold the claim
    assert mark_column([cell(1.0, 0.01), cell(2.0, None, 1)], lower_is_better=True) == ["lead", None]


def test_all_equal_column_is_unmarked():
    assert mark_column([cell(0.0, None, 1), cell(0.0, None, 1)], lower_is_better=True) == [None, None]


def test_markdown_marks_and_notes():
    summary = {
        "lm": {
            "a": {"e8": {"test_ppl": cell(10.0, 0.5)}},
            "b": {"e8": {"test_ppl": cell(20.0, 0.5)}},
            "c": {"e8": {"test_ppl": cell(10.2, 0.5)}},
        }
    }
    md = markdown(summary)
    assert "| a | e8 | 3 | 10 ± 0.5 ≈ |" in md and "| c | e8 | 3 | 10.2 ± 0.5 ≈ |" in md
    assert "| b | e8 | 3 | 20 ± 0.5 |" in md and "**" not in md.split("## lm")[1]
    summary["lm"]["c"]["e8"]["test_ppl"] = cell(15.0, 0.5)
    assert "**10 ± 0.5**" in markdown(summary)
    one = {"lm": {"a": {"e8": {"test_ppl": cell(1.0, None, 1)}}, "b": {"e8": {"test_ppl": cell(2.0, None, 1)}}}}
    md = markdown(one)
    assert "n = 1" in md and "_1_" in md and "**" not in md.split("## lm")[1]


# ------------------------------------------------------------------ a synthetic metrics tree
def _write_run(root: Path, gating: str, size: str, seed: int, ppl: float, norm: str = "sparsemax") -> None:
    """One seed of a variant in the study layout: <task>/<variant>/{train,eval}/s<seed>.* (+ the benchmark)."""
    variant = root / "lm" / f"{gating}-{size}"
    live = variant / "train" / "live" / f"s{seed}" / "plots" / "metrics"
    (live / "train").mkdir(parents=True)
    (live / "val").mkdir(parents=True)
    (live / "train" / "loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{s}\t{7 - s * 0.1 - seed * 0.01}\n" for s in range(1, 11))
    )
    (live / "val" / "loss.tsv").write_text(f"step\tloss\n5\t6.6\n10\t{6.2 + seed * 0.01}\n")
    config = {"task": "lm", "gating": gating, "preset": size, "seed": seed, "model": {"moe": {"norm": norm}}}
    layers = [
        {"expert_share": [0.5, 0.25, 0.25, 0.0], "experts_per_token_hist": [0, 6, 3, 1, 0], "experts_per_token": 1.5}
    ] * 2
    spec = {
        "layer": 1,
        "split": "test",
        "experts": [
            {
                "expert": 0,
                "tokens": 9,
                "top": [{"token": " the", "count": 5, "share": 0.5}, {"token": "\n", "count": 4, "share": 1.0}],
            }
        ],
    }
    ev = {
        "test_ppl": ppl,
        "flops_per_token": 1000.0 * (1 + len(gating)),
        "experts_per_token": 1.5,
        "load_cv": 0.3,
        "dropped_fraction": 0.0,
    }
    (variant / "eval").mkdir(parents=True, exist_ok=True)
    (variant / "eval" / f"s{seed}.json").write_text(json.dumps(ev))
    (variant / "eval" / f"s{seed}.meta.json").write_text(json.dumps({"config": config}))
    (variant / "eval" / f"s{seed}.routing.json").write_text(json.dumps({"layers": layers, "specialisation": spec}))
    (variant / "train" / f"s{seed}.json").write_text(json.dumps({"wall_s": 1.0 + seed}))
    (variant / "train" / f"s{seed}.meta.json").write_text(json.dumps({"config": config}))
    bench = root.parent / "bench" / "lm" / f"{gating}-{size}.json"  # per variant, not per seed
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text(json.dumps({"forward_ms": 3.0}))


def test_report_on_synthetic_tree(tmp_path):
    metrics, study = tmp_path / "metrics", tmp_path / "metrics" / "study"
    for seed, ppl in enumerate([1.0, 2.0, 3.0]):
        _write_run(study, "linear-sparsemax", "e8", seed, 100 + ppl)
        _write_run(study, "linear-softmax-top2", "e8", seed, 200 + 10 * ppl, norm="softmax")
    summary = report(study, metrics, tmp_path / "plots")

    on_disk = json.loads((metrics / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    ppl = on_disk["lm"]["linear-sparsemax"]["e8"]["test_ppl"]  # task -> variant -> size -> metric
    assert set(ppl) == {"mean", "std", "ci95", "n"}
    assert ppl["mean"] == pytest.approx(102.0) and ppl["n"] == 3
    assert ppl["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    wall = on_disk["lm"]["linear-softmax-top2"]["e8"]["wall_s"]
    assert wall["mean"] == pytest.approx(2.0)
    latency = on_disk["lm"]["linear-softmax-top2"]["e8"]["forward_ms"]
    assert latency["n"] == 1 and latency["ci95"] is None  # one measurement, not three identical "seeds"

    md = (metrics / "summary.md").read_text()
    assert "**102 ± 2.484**" in md  # separated from 220 ± 24.8: claimed
    assert "Expert specialisation" in md and "`␣the` 50%" in md and "`\\n` 100%" in md

    for name in FIGURES:
        png = tmp_path / "plots" / f"lm_{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_without_plots_dir(tmp_path):
    _write_run(tmp_path / "m", "linear-sparsemax", "e8", 0, 100.0)
    report(tmp_path / "m", tmp_path / "out", None)
    assert (tmp_path / "out" / "summary.md").exists() and not (tmp_path / "plots").exists()


def test_pareto_front():
    pts = [(1.0, 300.0), (2.0, 200.0), (3.0, 250.0), (4.0, 150.0), (0.5, 400.0)]
    assert pareto_front(pts, lower_is_better=True) == [4, 0, 1, 3]
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)], lower_is_better=False) == [0, 2]
