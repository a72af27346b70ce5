"""moelab.report: exact intervals, best/tie marking, references and the trivial-reference flag, soft
routing's load CV, forward ms from the latest benchmark only, the test-size column, the paired
comparisons of "What the data supports", summary.json nesting, and the figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from moelab.report import data, tables
from moelab.report.data import describe, load
from moelab.report.evidence import comparisons
from moelab.report.plots import FIGURES, front_cells, pareto_front
from moelab.report.tables import mark_column, markdown, report
from moelab.tasks import TASKS, Metric, Task


def cell(mean: float, ci: float | None, n: int = 3) -> dict:
    return {"mean": mean, "std": 0.0, "ci95": ci, "n": n}


# ------------------------------------------------------------------ statistics
def test_t_interval_is_exact_for_every_n():
    d = describe([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["n"] == 3 and d["std"] == pytest.approx(1.0)  # sample std, n - 1
    assert d["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) / math.sqrt(3))  # 4.303
    values = [float(i % 7) for i in range(41)]  # df = 40: 2.021, not the normal 1.96
    d = describe(values)
    half_over_se = d["ci95"] / (d["std"] / math.sqrt(41))
    assert half_over_se == pytest.approx(2.021, abs=5e-4)
    assert not hasattr(tables, "t95") and not hasattr(tables, "_T95")  # no hand table left


def test_single_seed_has_no_interval():
    assert describe([5.0]) == {"mean": 5.0, "std": 0.0, "ci95": None, "n": 1}


# ------------------------------------------------------------------ marking
def test_best_claimed_only_when_separated():
    # lower is better; 1 ± 0.1 does not overlap 2 ± 0.1 or 3 ± 0.1
    assert mark_column([cell(2, 0.1), cell(1, 0.1), cell(3, 0.1)], higher_is_better=False) == [None, "best", None]
    assert mark_column([cell(2, 0.1), cell(1, 0.1), cell(3, 0.1)], higher_is_better=True) == [None, None, "best"]


def test_overlapping_runner_up_is_a_tie():
    marks = mark_column([cell(1.0, 0.5), cell(1.4, 0.5), cell(5.0, 0.1)], higher_is_better=False)
    assert marks == ["tie", "tie", None]


def test_n1_is_never_claimed_best():
    assert mark_column([cell(1.0, None, 1), cell(2.0, None, 1)], higher_is_better=False) == ["lead", None]
    # one cell without an interval is enough to withhold the claim
    assert mark_column([cell(1.0, 0.01), cell(2.0, None, 1)], higher_is_better=False) == ["lead", None]


def test_all_equal_column_is_unmarked():
    assert mark_column([cell(0.0, None, 1), cell(0.0, None, 1)], higher_is_better=False) == [None, None]


# ------------------------------------------------------------------ a synthetic metrics tree
def _write_run(
    root: Path,
    gating: str,
    size: str,
    seed: int,
    quality: dict | float,
    task: str = "lm",
    norm: str | None = "sparsemax",
    top_k: int = 0,
    **extra,
) -> Path:
    """One seed of a variant in the study layout: <task>/<variant>/{train,eval}/s<seed>.* (+ the benchmark).
    quality: the test metrics (a float: test_ppl); norm None: the dense baseline."""
    variant = root / task / (gating if gating == "dense" else f"{gating}-{size}")
    live = variant / "train" / "live" / f"s{seed}" / "plots" / "metrics"
    (live / "train").mkdir(parents=True)
    (live / "val").mkdir(parents=True)
    (live / "train" / "loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{s}\t{7 - s * 0.1 - seed * 0.01}\n" for s in range(1, 11))
    )
    (live / "val" / "loss.tsv").write_text(f"step\tloss\n5\t6.6\n10\t{6.2 + seed * 0.01}\n")
    moe = None if norm is None else {"norm": norm, "top_k": top_k}
    config = {"task": task, "gating": gating, "preset": size, "seed": seed, "model": {"moe": moe}}
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
    quality = {"test_ppl": quality, "test_tokens": 4096} if isinstance(quality, (int, float)) else quality
    ev = {"val_ppl": 1e9, **quality, "flops_per_token": 1000.0 * (1 + len(gating))}
    if norm is not None:
        ev.update(experts_per_token=1.5, load_cv=0.3, dropped_fraction=0.0)
    ev.update(extra)
    (variant / "eval").mkdir(parents=True, exist_ok=True)
    (variant / "eval" / f"s{seed}.json").write_text(json.dumps(ev))
    (variant / "eval" / f"s{seed}.meta.json").write_text(json.dumps({"config": config}))
    (variant / "eval" / f"s{seed}.routing.json").write_text(json.dumps({"layers": layers, "specialisation": spec}))
    (variant / "train" / f"s{seed}.json").write_text(json.dumps({"wall_s": 1.0 + seed}))
    (variant / "train" / f"s{seed}.meta.json").write_text(json.dumps({"config": config}))
    bench = root.parent / "bench" / task / f"{variant.name}.json"  # per variant, not per seed
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text(json.dumps({"forward_ms": 3.0}))
    return bench


def _write_reference(root: Path, task: str, references: dict) -> None:
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / "reference.json").write_text(json.dumps(references))


def _row(md: str, first_cell: str) -> list[str]:
    """The cells of the summary.md table row that starts with `first_cell`."""
    line = next(line for line in md.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _header(md: str, task: str) -> list[str]:
    section = md.split(f"## {task}\n")[1]
    line = next(line for line in section.splitlines() if line.startswith("| variant |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _column(md: str, task: str, first_cell: str, label: str) -> str:
    return _row(md, first_cell)[_header(md, task).index(label)]


def test_report_on_synthetic_tree(tmp_path):
    metrics, study = tmp_path / "metrics", tmp_path / "metrics" / "study"
    for seed, ppl in enumerate([1.0, 2.0, 3.0]):
        _write_run(study, "linear-sparsemax", "e8", seed, 100 + ppl)
        _write_run(study, "linear-softmax-top2", "e8", seed, 200 + 10 * ppl, norm="softmax", top_k=2)
        _write_run(study, "dense", "e8", seed, 250 + ppl, norm=None)
    unigram = {"description": "add-one unigram", "test_ppl": 400.0, "test_loss": 6.0, "test_tokens": 4096}
    _write_reference(study, "lm", {"unigram": {**unigram, "val_ppl": 390.0}})
    summary = report(study, metrics, tmp_path / "plots")

    on_disk = json.loads((metrics / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    ppl = on_disk["lm"]["linear-sparsemax"]["e8"]["test_ppl"]  # task -> variant -> size -> metric
    assert set(ppl) == {"mean", "std", "ci95", "n"}
    assert ppl["mean"] == pytest.approx(102.0) and ppl["n"] == 3
    assert ppl["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert "val_ppl" not in on_disk["lm"]["linear-sparsemax"]["e8"]  # the test split only: compact
    assert on_disk["lm"]["linear-softmax-top2"]["e8"]["wall_s"]["mean"] == pytest.approx(2.0)
    latency = on_disk["lm"]["linear-softmax-top2"]["e8"]["forward_ms"]
    assert latency["n"] == 1 and latency["ci95"] is None  # one measurement, not three identical "seeds"
    assert on_disk["lm"]["references"] == {"unigram": {"test_ppl": 400.0, "test_loss": 6.0, "test_tokens": 4096}}
    for gating, sizes in on_disk["lm"].items():  # every leaf of a model cell is a describe() dict
        if gating != "references":
            assert all(set(d) == {"mean", "std", "ci95", "n"} for m in sizes.values() for d in m.values())

    md = (metrics / "summary.md").read_text()
    assert _row(md, "reference: unigram")[:5] == ["reference: unigram", "–", "–", "400", "6"]
    assert _row(md, "dense (baseline)")[:3] == ["dense (baseline)", "e8", "3"]
    assert _column(md, "lm", "linear-sparsemax", "perplexity") == "**102 ± 2.484**"  # separated: claimed
    assert _column(md, "lm", "linear-sparsemax", "n test (tokens)") == "4096"
    assert "Expert specialisation" in md and "`␣the` 50%" in md and "`\\n` 100%" in md

    for name in FIGURES:
        png = tmp_path / "plots" / f"lm_{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_without_plots_dir(tmp_path):
    _write_run(tmp_path / "m", "linear-sparsemax", "e8", 0, 100.0)
    report(tmp_path / "m", tmp_path / "out", None)
    assert (tmp_path / "out" / "summary.md").exists() and not (tmp_path / "plots").exists()


def test_meta_and_routing_files_are_not_seeds(tmp_path):
    _write_run(tmp_path, "linear-sparsemax", "e8", 4, 100.0)
    names = [p.name for p in data.seed_files(tmp_path, "eval")]
    assert names == ["s4.json"]


# ------------------------------------------------------------------ references and the trivial flag
def test_variant_worse_than_a_trivial_reference_is_flagged_and_not_ranked(tmp_path):
    study = tmp_path / "metrics" / "study"
    for seed in range(3):
        _write_run(study, "linear-sparsemax", "e8", seed, 100.0 + seed)
        _write_run(study, "linear-softmax-top2", "e8", seed, 300.0 + seed, norm="softmax", top_k=2, flops_per_token=1.0)
        _write_run(study, "attention-sparsemax", "e8", seed, 150.0 + seed)
    _write_reference(study, "lm", {"unigram": {"description": "unigram", "test_ppl": 200.0, "test_tokens": 4096}})
    report(study, tmp_path / "metrics", None)
    md = (tmp_path / "metrics" / "summary.md").read_text()
    assert _column(md, "lm", "linear-softmax-top2", "perplexity") == "301 ± 2.484 ▼"
    assert "▼ linear-softmax-top2 e8: mean perplexity worse than unigram: not ranked." in md
    assert _column(md, "lm", "linear-sparsemax", "perplexity") == "**101 ± 2.484**"
    # the unranked variant gets no mark in any column, even where its value is best (FLOPs/token)
    assert "**" not in "".join(_row(md, "linear-softmax-top2"))
    task = load(study)["lm"]
    assert not task.ranked(("linear-softmax-top2", "e8")) and task.ranked(("attention-sparsemax", "e8"))


def test_summariser_below_lead_n_is_not_ranked_and_said_so(tmp_path):
    study = tmp_path / "metrics" / "study"
    scores = {"test_rougeL": 0.1, "test_rouge1": 0.12, "test_rouge2": 0.01, "test_rougeLsum": 0.1}
    for seed in range(3):
        for gating, flops_shift in (("linear-softmax-top2", 0.0), ("linear-sparsemax", 0.01)):
            quality = {k: v + flops_shift + 0.001 * seed for k, v in scores.items()} | {"test_examples": 64}
            _write_run(study, gating, "e8", seed, quality, task="summarization")
    lead = {"description": "lead-12", "test_rougeL": 0.2, "test_rouge1": 0.25, "test_rouge2": 0.05}
    _write_reference(study, "summarization", {"lead-12": {**lead, "test_rougeLsum": 0.2, "test_examples": 64}})
    report(study, tmp_path / "metrics", tmp_path / "plots")
    md = (tmp_path / "metrics" / "summary.md").read_text()
    assert "**No summarization model beats the trivial reference lead-12** on ROUGE-L" in md
    assert "No model is ranked, so none is called best." in md
    section = md.split("## summarization")[1].split("## What the data supports")[0]
    assert "**" not in section.split("- ")[0] and "≈" not in section  # no best / tie marks in the table
    assert _column(md, "summarization", "reference: lead-12", "n test (examples)") == "64"
    task = load(study)["summarization"]
    headline = task.headline
    assert headline.key == "test_rougeL"  # the task's first declared metric, read from TASKS
    assert front_cells(task, headline, task.models()) == []  # not Pareto-marked
    assert (tmp_path / "plots" / "summarization_quality_flops.png").exists()


def test_reference_on_other_examples_is_called_out(tmp_path):
    study = tmp_path / "metrics" / "study"
    _write_run(study, "linear-sparsemax", "e8", 0, 100.0)  # test_tokens 4096
    _write_reference(study, "lm", {"unigram": {"description": "u", "test_ppl": 200.0, "test_tokens": 4096}})
    report(study, tmp_path / "metrics", None)
    assert "not on the same test examples" not in (tmp_path / "metrics" / "summary.md").read_text()
    _write_reference(study, "lm", {"unigram": {"description": "u", "test_ppl": 200.0, "test_tokens": 2048}})
    report(study, tmp_path / "metrics", None)
    md = (tmp_path / "metrics" / "summary.md").read_text()
    assert "**unigram is not on the same test examples as the models**: n test (tokens) 2048 vs 4096" in md


def test_trivial_reference_is_declared_or_the_weakest(tmp_path):
    study = tmp_path / "study"
    _write_run(study, "linear-sparsemax", "e8", 0, {"test_accuracy": 0.62, "test_examples": 10}, task="classification")
    refs = {
        "majority": {"description": "m", "test_accuracy": 0.5, "test_examples": 10},
        "bow-logreg": {"description": "b", "test_accuracy": 0.7, "test_examples": 10},
    }
    _write_reference(study, "classification", refs)
    task = load(study)["classification"]
    assert {n: r["trivial"] for n, r in task.references.items()} == {"majority": True, "bow-logreg": False}
    cell_key = ("linear-sparsemax", "e8")
    assert task.below(cell_key) == ["bow-logreg"] and task.ranked(cell_key)  # below context only: still ranked
    refs["bow-logreg"]["trivial"] = True  # a declared flag wins over the weakest-value rule
    _write_reference(study, "classification", refs)
    task = load(study)["classification"]
    assert task.references["majority"]["trivial"] is False and not task.ranked(cell_key)


def test_pareto_front_skips_unranked(tmp_path):
    study = tmp_path / "study"
    for seed in range(2):
        _write_run(study, "a-x", "e8", seed, 300.0 + seed)  # fewest FLOPs, worse than the reference
        _write_run(study, "b-long-name", "e8", seed, 100.0 + seed)
    _write_reference(study, "lm", {"unigram": {"description": "u", "test_ppl": 200.0}})
    task = load(study)["lm"]
    assert front_cells(task, task.headline, task.models()) == [("b-long-name", "e8")]


def test_pareto_front():
    pts = [(1.0, 300.0), (2.0, 200.0), (3.0, 250.0), (4.0, 150.0), (0.5, 400.0)]
    assert pareto_front(pts, higher_is_better=False) == [4, 0, 1, 3]
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)], higher_is_better=True) == [0, 2]


# ------------------------------------------------------------------ load CV of soft routing
def test_soft_routing_load_cv_is_not_shown_or_ranked(tmp_path):
    study = tmp_path / "metrics" / "study"
    for seed in range(3):
        _write_run(study, "linear-softmax-soft", "e8", seed, 100.0 + seed, norm="softmax", top_k=0, load_cv=0.0)
        _write_run(study, "linear-softmax-top2", "e8", seed, 100.0 + seed, norm="softmax", top_k=2, load_cv=0.0)
        _write_run(study, "linear-sparsemax", "e8", seed, 100.0 + seed, norm="sparsemax", top_k=0, load_cv=0.5)
    summary = report(study, tmp_path / "metrics", None)
    md = (tmp_path / "metrics" / "summary.md").read_text()
    assert "load_cv" not in summary["lm"]["linear-softmax-soft"]["e8"]
    assert _column(md, "lm", "linear-softmax-soft", "load CV") == "–"
    # decided by the config, not the value: a top-2 gate measuring 0 keeps its 0, a sparse soft gate its CV
    assert _column(md, "lm", "linear-softmax-top2", "load CV") == "0 ± 0"
    assert _column(md, "lm", "linear-sparsemax", "load CV") == "0.5 ± 0"
    assert "not comparable across gate types" in md


# ------------------------------------------------------------------ forward ms: the latest benchmark only
def test_forward_ms_comes_from_the_latest_benchmark_only(tmp_path):
    study = tmp_path / "metrics" / "study"
    bench = _write_run(study, "linear-sparsemax", "e8", 0, 100.0, forward_ms=999.0)  # eval.json's is not read
    (study / "lm" / "linear-sparsemax-e8" / "train" / "s0.json").write_text(json.dumps({"forward_ms": 888.0}))
    assert report(study, tmp_path / "metrics", None)["lm"]["linear-sparsemax"]["e8"]["forward_ms"]["mean"] == 3.0
    bench.write_text(json.dumps({"forward_ms": 4.5}))
    assert report(study, tmp_path / "metrics", None)["lm"]["linear-sparsemax"]["e8"]["forward_ms"]["mean"] == 4.5
    assert _column((tmp_path / "metrics" / "summary.md").read_text(), "lm", "linear-sparsemax", "forward ms") == "4.5"


def test_benchmark_of_another_config_is_ignored(tmp_path):
    study = tmp_path / "metrics" / "study"
    bench = _write_run(study, "linear-sparsemax", "e8", 0, 100.0)
    eval_config = json.loads((study / "lm" / "linear-sparsemax-e8" / "eval" / "s0.meta.json").read_text())["config"]
    stale = {**eval_config, "model": {"moe": {"norm": "sparsemax", "top_k": 0}, "d_model": 999}}
    bench.with_name(f"{bench.stem}.meta.json").write_text(json.dumps({"config": stale}))
    summary = report(study, tmp_path / "metrics", None)
    assert "forward_ms" not in summary["lm"]["linear-sparsemax"]["e8"]
    assert "measured another config" in (tmp_path / "metrics" / "summary.md").read_text()
    bench.with_name(f"{bench.stem}.meta.json").write_text(json.dumps({"config": eval_config}))
    assert report(study, tmp_path / "metrics", None)["lm"]["linear-sparsemax"]["e8"]["forward_ms"]["mean"] == 3.0


# ------------------------------------------------------------------ metrics from the TASKS registry
class _Toy(Task):
    name = "toy"
    metrics = (Metric("bleu", "BLEU", True), Metric("loss", "loss", False))
    count_key = "sentences"


def test_columns_come_from_the_task_class(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS.classes, "toy", _Toy)
    study = tmp_path / "study"
    for seed in range(2):
        quality = {"test_bleu": 0.3 + seed / 100, "test_loss": 2.0, "test_sentences": 77, "test_ppl": 5.0}
        _write_run(study, "linear-sparsemax", "e8", seed, quality, task="toy")
    _write_reference(study, "toy", {"copy": {"description": "c", "test_bleu": 0.1, "test_sentences": 77}})
    report(study, tmp_path / "out", None)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert _header(md, "toy")[3:6] == ["BLEU", "loss", "n test (sentences)"]
    assert "perplexity" not in md  # test_ppl is not a metric of this task
    assert _column(md, "toy", "linear-sparsemax", "n test (sentences)") == "77"


# ------------------------------------------------------------------ what the data supports
def test_paired_comparisons_claim_only_what_the_interval_supports(tmp_path):
    study = tmp_path / "metrics" / "study"
    dense = [200.0, 230.0, 260.0]  # a seed effect of ±30 hides an unpaired difference of 5
    moe_a = [195.0, 224.0, 256.0]  # paired differences -5, -6, -4
    moe_b = [180.0, 250.0, 240.0]  # paired differences -20, +20, -20: not separated
    for seed in range(3):
        _write_run(study, "dense", "e8", seed, dense[seed], norm=None)
        _write_run(study, "lin-a", "e8", seed, moe_a[seed])
        _write_run(study, "lin-b", "e8", seed, moe_b[seed])
    report(study, tmp_path / "metrics", None)
    md = (tmp_path / "metrics" / "summary.md").read_text()
    supports = md.split("## What the data supports")[1]
    assert "Rule, fixed before looking at any result" in supports
    ci = scipy_stats.ttest_rel(moe_a, dense).confidence_interval(0.95)  # an independent reference
    claim = re.search(r"lin-a e8 has lower perplexity than dense \(better\): -5 \[(\S+), (\S+)\], n = 3", supports)
    assert claim, supports
    assert (float(claim.group(1)), float(claim.group(2))) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert "lin-b e8 has" not in supports and "than lin-b" not in supports  # no sentence without support
    assert "(1 of 2 separated)" in supports
    # unpaired, the two intervals overlap: the table does not claim it, the paired comparison does
    assert _column(md, "lm", "lin-a", "perplexity").endswith("≈")
    vs_dense, vs_best = comparisons(load(study)["lm"])
    assert [(c.a[0], c.b[0]) for c in vs_dense] == [("lin-a", "dense"), ("lin-b", "dense")]
    assert [(c.a[0], c.b[0]) for c in vs_best] == [("lin-b", "lin-a")]  # the best mean (223.3) vs the other MoE


def test_comparisons_pair_by_seed_number(tmp_path):
    study = tmp_path / "study"
    for seed, ppl in ((0, 100.0), (1, 110.0), (5, 120.0)):
        _write_run(study, "dense", "e8", seed, ppl + 10, norm=None)
    for seed, ppl in ((1, 110.0), (5, 120.0), (7, 1.0)):  # seed 7 has no dense partner: left out
        _write_run(study, "lin-a", "e8", seed, ppl)
    vs_dense, _ = comparisons(load(study)["lm"])
    assert vs_dense[0].difference.n == 2 and vs_dense[0].difference.mean == pytest.approx(-10.0)


def test_single_seed_claims_nothing(tmp_path):
    study = tmp_path / "metrics" / "study"
    _write_run(study, "dense", "e8", 0, 300.0, norm=None)
    _write_run(study, "lin-a", "e8", 0, 100.0)
    report(study, tmp_path / "metrics", None)
    supports = (tmp_path / "metrics" / "summary.md").read_text().split("## What the data supports")[1]
    assert " has " not in supports and "fewer than 2 common seeds: no interval" in supports


def test_markdown_of_empty_study_has_the_rule_only():
    assert "What the data supports" in markdown({})
