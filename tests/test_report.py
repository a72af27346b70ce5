"""moelab.report: it reads exactly the runs params.yaml asks for (no glob: stale runs on disk are ignored,
a missing or foreign run is one line naming its stage), exact intervals, best/tie marks, reference roles
(trivial ▼, bar ▽, context), soft routing's load CV, forward ms from the latest benchmark only, the
headline metrics file (numbers only, stable), summary.json / summary.md, the bases, and the figures
(the expert-load profile is sorted per run before it is averaged). Flags and the Holm-adjusted
comparisons: tests/test_report_flags.py, which shares this file's synthetic study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moelab import study
from moelab.errors import DataError
from moelab.report import tables
from moelab.report.data import Roots, Run, describe, layer_label, load, reference_role, task_columns
from moelab.report.plots import FIGURES, sorted_load_profile
from moelab.report.tables import mark_column, markdown, report
from moelab.resolve import load_params
from moelab.tasks import TASKS, Metric, Task

LM_REFERENCES = {
    "unigram": {"description": "u", "trivial": True, "test_ppl": 400.0, "test_bpc": 3.0, "test_tokens": 4096},
    "kn-bigram": {"description": "b", "trivial": False, "test_ppl": 150.0, "test_bpc": 2.5, "test_tokens": 4096},
    "kn-trigram": {"description": "t", "trivial": False, "test_ppl": 140.0, "test_bpc": 2.4, "test_tokens": 4096},
    "kn-char-5gram": {"description": "c", "trivial": False, "test_bpc": 2.2},
}
SHARES = [0.2, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1]  # 8 experts, none dead


def cell(mean: float, ci: float | None, n: int = 3) -> dict:
    return {"mean": mean, "std": 0.0, "ci95": ci, "n": n}


# ------------------------------------------------------------------ a synthetic study
class Lab:
    """A small params.yaml (a copy of the repo's with fewer tasks, variants and seeds) and the files of
    study.py's layout in the test's working directory (the report's default roots)."""

    def __init__(
        self,
        params_file,
        tasks=("lm",),
        gates=("sparsemax", "softmax-top2"),
        seeds=(0, 1, 2),
        name="params.yaml",
        **extra,
    ):
        def mutate(d):
            d.update(tasks=list(tasks), routers=["linear"], gates=list(gates), models=["e8"], seeds=list(seeds))
            if d["task"] not in tasks:  # the experiment fine-tunes from a base the study trains
                d["task"] = tasks[0]
            for key, value in extra.items():
                section, field = key.split("__")  # e.g. lm__pretrain=...
                d[section][field] = value

        self.path = params_file(mutate, name=name)
        self.params = load_params(self.path)

    def variant(self, task: str, name: str) -> study.Variant:
        return next(v for v in study.variants(self.params, task) if v.name == name)

    def config(self, variant: study.Variant, seed: int) -> dict:
        run = study.runs(self.params, variant, [seed])[0]
        return json.loads(json.dumps(run.to_dict(), default=str))

    def write_run(self, task, name, seed, quality: float | dict, layers=None, config=None, **extra) -> None:
        """One run's eval/s<seed>.json (+ .meta.json, .routing.json), train/s<seed>.json and loss curves.
        quality: the headline value (a float) or every test metric (a dict)."""
        variant = self.variant(task, name)
        paths = study.run_paths(variant, seed)
        values = {**default_quality(task, quality), "flops_per_token": 1000.0 * (2 if variant.dense else 1)}
        if not variant.dense:
            values |= {"experts_per_token": 2.0, "load_cv": 0.3, "routing_entropy_ratio": 0.8, "dropped_fraction": 0.0}
            layers = default_layers(task) if layers is None else layers
        values |= extra
        write(paths.eval, values)
        write(paths.eval.with_name(f"s{seed}.meta.json"), {"config": config or self.config(variant, seed)})
        write(paths.routing, {"layers": layers or [], "specialisation": SPECIALISATION if not variant.dense else {}})
        write(paths.train, {"steps": 10, "wall_s": 1.0 + seed})
        curves = paths.live / "plots" / "metrics"
        (curves / "train").mkdir(parents=True, exist_ok=True)
        (curves / "val").mkdir(parents=True, exist_ok=True)
        (curves / "train" / "loss.tsv").write_text(
            "step\tloss\n" + "".join(f"{s}\t{7 - s / 10}\n" for s in range(1, 11))
        )
        (curves / "val" / "loss.tsv").write_text(f"step\tloss\n5\t6.6\n10\t{6.2 + seed / 100}\n")

    def fill(self, task: str, headline: dict[str, list], **extra) -> None:
        """Every seed of every listed variant, headline values in seed order."""
        for name, values in headline.items():
            for seed, value in zip(self.params.seeds, values):
                self.write_run(task, name, seed, value, **extra)

    def references(self, task: str, refs: dict) -> None:
        write(study.references_path(task), refs)


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def default_quality(task: str, quality: float | dict) -> dict:
    if isinstance(quality, dict):
        return quality
    if task == "lm":
        return {"test_ppl": quality, "test_bpc": math.log2(quality) / 3, "test_loss": math.log(quality)} | {
            "test_tokens": 4096
        }
    if task == "classification":
        return {"test_accuracy": quality, "test_macro_f1": quality - 0.05, "test_loss": 0.6, "test_examples": 100} | {
            "test_top_class_share": 0.6
        }
    return {"test_rougeL": quality, "test_rouge1": quality + 0.05, "test_rouge2": quality / 2} | {
        "test_rougeLsum": quality,
        "test_loss": 3.0,
        "test_examples": 64,
        "test_degenerate_fraction": 0.0,
    }


def default_layers(task: str) -> list[dict]:
    if task == "summarization":
        modules = ["hf.encoder.block.0.layer.1.mlp.moe", "hf.decoder.block.0.layer.2.mlp.moe"]
    else:
        modules = ["blocks.0.ffn", "blocks.1.ffn"]
    hist = [0, 2, 6, 1, 0, 0, 0, 0, 0]
    return [{"module": m, "n_experts": 8, "expert_share": SHARES, "experts_per_token_hist": hist} for m in modules]


SPECIALISATION = {
    "layer": 1,
    "experts": [{"expert": 0, "tokens": 9, "top": [{"token": " the", "share": 0.5}, {"token": "\n", "share": 1.0}]}],
}


@pytest.fixture
def lab(tmp_path, params_file, monkeypatch):
    """Lab(**options) in a fresh working directory (the report reads and writes relative to it)."""
    monkeypatch.chdir(tmp_path)
    return lambda **options: Lab(params_file, **options)


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


def _summary_md() -> str:
    return Path("metrics/summary.md").read_text()


# ------------------------------------------------------------------ statistics
def test_t_interval_is_exact_for_every_n():
    d = describe([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["n"] == 3 and d["std"] == pytest.approx(1.0)  # sample std, n - 1
    assert d["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) / math.sqrt(3))  # 4.303
    values = [float(i % 7) for i in range(41)]  # df = 40: 2.021, not the normal 1.96
    d = describe(values)
    assert d["ci95"] / (d["std"] / math.sqrt(41)) == pytest.approx(2.021, abs=5e-4)
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
    assert mark_column([cell(1.0, 0.01), cell(2.0, None, 1)], higher_is_better=False) == ["lead", None]


def test_all_equal_column_is_unmarked():
    assert mark_column([cell(0.0, None, 1), cell(0.0, None, 1)], higher_is_better=False) == [None, None]


# ------------------------------------------------------------------ exactly what params.yaml asks for
def test_reads_exactly_the_requested_variants_and_seeds(lab):
    lab_ = lab()
    lab_.fill("lm", {"linear-sparsemax-e8": [101, 102, 103], "linear-softmax-top2-e8": [121, 122, 123]})
    lab_.fill("lm", {"dense": [131, 132, 133]})
    lab_.references("lm", LM_REFERENCES)
    # left on disk by an earlier params.yaml: a fourth seed, a removed gate, a removed task
    wider = lab(gates=("sparsemax", "softmax-soft"), seeds=(0, 1, 2, 3), name="earlier.yaml")
    wider.fill("lm", {"linear-softmax-soft-e8": [1.0] * 4})
    wider.write_run("lm", "linear-sparsemax-e8", 3, 1.0)  # seed 3 of a requested variant
    stale_task = Path("metrics/study/classification/linear-sparsemax-e8/eval/s0.json")
    write(stale_task, {"test_accuracy": 0.9})
    summary = report(lab_.params, plots_dir=None)

    assert list(summary) == ["lm"]
    assert list(summary["lm"]["variants"]) == ["linear-sparsemax-e8", "linear-softmax-top2-e8", "dense"]
    sparsemax = summary["lm"]["variants"]["linear-sparsemax-e8"]
    assert sparsemax["seeds"] == [0, 1, 2] and sparsemax["metrics"]["test_ppl"]["mean"] == pytest.approx(102.0)
    assert "linear-softmax-soft" not in _summary_md()


def test_a_missing_requested_run_is_one_line_naming_its_stage(lab, capfd):
    from moelab.cli import main

    lab_ = lab()
    lab_.fill("lm", {"linear-sparsemax-e8": [101, 102, 103], "linear-softmax-top2-e8": [121, 122, 123]})
    lab_.fill("lm", {"dense": [131, 132, 133]})
    lab_.references("lm", LM_REFERENCES)
    missing = study.run_paths(lab_.variant("lm", "linear-softmax-top2-e8"), 1).eval
    missing.unlink()
    with pytest.raises(DataError) as err:
        load(lab_.params)
    assert str(err.value) == f"{missing} is missing: run `dvc repro study/dvc.yaml:evaluate@lm-linear-softmax-top2-e8`"

    study.run_paths(lab_.variant("lm", "dense"), 2).eval.unlink()
    capfd.readouterr()
    assert main(["report", "--params", str(lab_.path)]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moelab report: error: ") and "(1 more requested runs" in lines[0]
    assert not Path("metrics/summary.md").exists() and not Path("metrics/study.json").exists()  # nothing written

    lab_.fill("lm", {"linear-softmax-top2-e8": [121, 122, 123]})
    with pytest.raises(
        DataError, match=r"dense/eval/s2\.json is missing: run `dvc repro study/dvc.yaml:evaluate-dense@lm`"
    ):
        load(lab_.params)


def test_an_unreadable_eval_json_names_the_file_and_its_stage(lab):
    lab_ = lab(gates=("sparsemax",), seeds=(0, 1))
    lab_.fill("lm", {"linear-sparsemax-e8": [101, 102], "dense": [131, 132]})
    lab_.references("lm", LM_REFERENCES)
    path = study.run_paths(lab_.variant("lm", "linear-sparsemax-e8"), 1).eval
    path.write_text(path.read_text()[:20])
    with pytest.raises(DataError, match=r"s1\.json is not valid JSON .*evaluate@lm-linear-sparsemax-e8"):
        load(lab_.params)


def test_a_run_of_another_config_is_refused(lab):
    lab_ = lab(gates=("sparsemax",), seeds=(0, 1))
    lab_.fill("lm", {"linear-sparsemax-e8": [101, 102], "dense": [131, 132]})
    lab_.references("lm", LM_REFERENCES)
    load(lab_.params)  # the configs match
    variant = lab_.variant("lm", "linear-sparsemax-e8")
    other = lab_.config(variant, 1)
    other["train"]["steps"] += 1
    lab_.write_run("lm", "linear-sparsemax-e8", 1, 102, config=other)
    with pytest.raises(DataError) as err:
        load(lab_.params)
    message = str(err.value)
    assert "s1.json was produced by another config: re-run dvc repro" in message and "\n" not in message
    steps = lab_.params.lm.train.steps
    assert "evaluate@lm-linear-sparsemax-e8" in message
    assert f"train.steps: {steps + 1} on disk, {steps} in params.yaml" in message
    lab_.write_run("lm", "linear-sparsemax-e8", 1, 102, config=lab_.config(variant, 0))  # seed 0's run as seed 1
    with pytest.raises(DataError, match="produced by another config.*seed: 0 on disk, 1 in params.yaml"):
        load(lab_.params)


# ------------------------------------------------------------------ references: roles and marks
def test_reference_roles_are_read_or_derived():
    assert reference_role("kn-trigram", {"role": "bar"}) == "bar"  # a declared role wins
    assert reference_role("unigram", {"trivial": True}) == "trivial"
    assert reference_role("majority", {"trivial": True}) == "trivial"
    for bar in ("kn-bigram", "lead-9-val", "bow-logreg"):
        assert reference_role(bar, {"trivial": False}) == "bar"
    for context in ("kn-trigram", "kn-char-5gram", "lead-9"):
        assert reference_role(context, {"trivial": False}) == "context"


def test_an_unknown_role_is_refused(lab):
    lab_ = lab(gates=("sparsemax",), seeds=(0,))
    lab_.fill("lm", {"linear-sparsemax-e8": [101], "dense": [131]})
    lab_.references("lm", {"unigram": {"description": "u", "role": "floor", "test_ppl": 400.0}})
    with pytest.raises(DataError, match="role 'floor'; allowed: trivial, bar, context.*references@lm"):
        load(lab_.params)


def test_trivial_and_bar_marks(lab):
    lab_ = lab()
    lab_.fill(
        "lm",
        {
            "linear-sparsemax-e8": [100.0, 101.0, 102.0],  # in regime: entirely below kn-bigram's 150
            "linear-softmax-top2-e8": [140.0, 148.0, 156.0],  # interval across 150: out of regime, s2 below the bar
            "dense": [500.0, 501.0, 502.0],  # worse than unigram: not ranked
        },
    )
    lab_.references("lm", LM_REFERENCES)
    report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert _column(md, "lm", "linear-sparsemax-e8", "perplexity") == "**101 ± 2.484**"
    assert _column(md, "lm", "linear-sparsemax-e8", "flags") == "–"
    assert _column(md, "lm", "linear-softmax-top2-e8", "perplexity") == "148 ± 19.873 ▽"
    assert _column(md, "lm", "linear-softmax-top2-e8", "flags") == "s2: ▽"
    assert _column(md, "lm", "dense (baseline)", "perplexity") == "501 ± 2.484 ▼ ▽"
    assert _column(md, "lm", "dense (baseline)", "flags") == "s0: ▽; s1: ▽; s2: ▽"
    assert "▼ dense: mean perplexity worse than unigram: not ranked." in md
    assert "▽ linear-softmax-top2-e8, dense: out of regime" in md
    assert (
        "In regime (beat the bar kn-bigram): linear-sparsemax-e8; out of regime (▽): linear-softmax-top2-e8, dense"
        in md
    )
    task = load(lab_.params)["lm"]
    assert {n: r["role"] for n, r in task.references.items()} == {
        "unigram": "trivial",
        "kn-bigram": "bar",
        "kn-trigram": "context",
        "kn-char-5gram": "context",
    }
    assert not task.ranked(lab_.variant("lm", "dense")) and task.ranked(lab_.variant("lm", "linear-softmax-top2-e8"))


def test_every_reference_row_in_every_column_it_has(lab):
    lab_ = lab(gates=("sparsemax",))
    lab_.fill("lm", {"linear-sparsemax-e8": [100.0, 101.0, 102.0], "dense": [110.0, 111.0, 112.0]})
    lab_.references("lm", LM_REFERENCES)
    report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert _header(md, "lm")[3:7] == ["perplexity", "bits per character", "loss (nats/token)", "n test (tokens)"]
    assert _row(md, "reference: kn-char-5gram (context)")[3:7] == ["–", "2.2", "–", "–"]
    assert _row(md, "reference: kn-bigram (bar)")[3:7] == ["150", "2.5", "–", "4096"]
    assert _column(md, "lm", "linear-sparsemax-e8", "bits per character") == "**2.219 ± 0.012**"
    assert _column(md, "lm", "dense (baseline)", "bits per character") != "–"


def test_the_reference_on_other_examples_is_called_out(lab):
    lab_ = lab(gates=("sparsemax",), seeds=(0,))
    lab_.fill("lm", {"linear-sparsemax-e8": [101], "dense": [131]})  # test_tokens 4096
    lab_.references("lm", {"unigram": {"description": "u", "trivial": True, "test_ppl": 400.0, "test_tokens": 4096}})
    report(lab_.params, plots_dir=None)
    assert "not on the same test examples" not in _summary_md()
    lab_.references("lm", {"unigram": {"description": "u", "trivial": True, "test_ppl": 400.0, "test_tokens": 2048}})
    report(lab_.params, plots_dir=None)
    assert "**unigram is not on the same test examples as the models**: n test (tokens) 2048 vs 4096" in _summary_md()


def test_summariser_below_the_trivial_lead_is_not_ranked_and_said_so(lab):
    lab_ = lab(tasks=("summarization",), gates=("sparsemax",))
    lab_.fill("summarization", {"linear-sparsemax-e8": [0.10, 0.11, 0.12], "dense": [0.09, 0.1, 0.11]})
    lead = {"description": "lead", "test_rougeL": 0.2, "test_rouge2": 0.05, "test_examples": 64}
    lab_.references("summarization", {"lead-7": {**lead, "trivial": True}, "lead-9-val": {**lead, "test_rougeL": 0.25}})
    report(lab_.params, plots_dir="plots")
    md = _summary_md()
    assert "**No summarization model beats the trivial reference lead-7** on ROUGE-L" in md
    assert "No model is ranked, so none is called best." in md
    section = md.split("## summarization")[1].split("## What the data supports")[0]
    assert "**" not in section.split("- ")[0] and "≈" not in section  # no best / tie marks in the table
    assert _column(md, "summarization", "reference: lead-7 (trivial)", "n test (examples)") == "64"
    assert load(lab_.params)["summarization"].headline.key == "test_rougeL"  # the first metric, from TASKS


# ------------------------------------------------------------------ summary, headline file, bases, figures
def test_report_writes_summary_headline_and_figures(lab):
    lab_ = lab(gates=("sparsemax", "softmax-soft"))
    lab_.fill(
        "lm",
        {
            "linear-sparsemax-e8": [100.0, 101.0, 102.0],
            "linear-softmax-soft-e8": [110.0, 111.0, 112.0],
            "dense": [120.0, 121.0, 122.0],
        },
    )
    lab_.references("lm", LM_REFERENCES)
    summary = report(lab_.params)
    assert json.loads(Path("metrics/summary.json").read_text()) == json.loads(json.dumps(summary))
    ppl = summary["lm"]["variants"]["linear-sparsemax-e8"]["metrics"]["test_ppl"]
    assert ppl["mean"] == pytest.approx(101.0) and ppl["n"] == 3
    assert ppl["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert summary["lm"]["references"]["kn-bigram"]["role"] == "bar"
    md = _summary_md()
    assert "Expert specialisation" in md.replace("expert specialisation", "Expert specialisation")
    assert "`␣the` 50%" in md and "`\\n` 100%" in md
    for name in FIGURES:
        png = Path("plots") / f"lm_{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def _leaves(tree: dict):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


def test_headline_file_is_numbers_only_compact_and_stable(lab):
    lab_ = lab(gates=("sparsemax", "softmax-soft"))
    lab_.fill(
        "lm",
        {
            "linear-sparsemax-e8": [100.0, 101.0, 102.123456789],
            "linear-softmax-soft-e8": [110.0, 111.0, 112.0],
            "dense": [120.0, 121.0, 122.0],
        },
    )
    lab_.references("lm", LM_REFERENCES)
    report(lab_.params, plots_dir=None)
    first = Path("metrics/study.json").read_bytes()
    report(lab_.params, plots_dir=None)
    assert Path("metrics/study.json").read_bytes() == first  # byte-identical: `dvc metrics diff` stays quiet
    headline = json.loads(first)
    assert all(type(v) in (int, float) for v in _leaves(headline))  # no strings, bools, nulls or settings
    sparsemax = headline["lm"]["linear-sparsemax-e8"]
    assert set(sparsemax) == {
        "test_ppl",
        "test_ppl_ci95",
        "test_bpc",
        "experts_per_token",
        "flops_per_token",
        "load_cv",
        "routing_entropy_ratio",
        "flagged_runs",
        "n",
    }
    assert sparsemax["test_ppl"] == 101.041 and sparsemax["n"] == 3 and sparsemax["flagged_runs"] == 0
    assert all(len(f"{v:.15g}".replace(".", "").lstrip("0")) <= 6 for v in _leaves(headline))  # 6 significant digits
    assert "load_cv" not in headline["lm"]["linear-softmax-soft-e8"]  # soft routing: 0 by construction
    assert set(headline["lm"]["dense"]) == {"test_ppl", "test_ppl_ci95", "test_bpc", "flops_per_token"} | {
        "flagged_runs",
        "n",
    }
    assert headline["lm"]["references"] == {
        "unigram": {"test_ppl": 400.0, "test_bpc": 3.0},
        "kn-bigram": {"test_ppl": 150.0, "test_bpc": 2.5},
        "kn-trigram": {"test_ppl": 140.0, "test_bpc": 2.4},
        "kn-char-5gram": {"test_bpc": 2.2},
    }
    rows = len(list(_leaves(headline)))
    assert rows <= 13 * 9 + 4 * 2  # 3 variants here; 13 variants x 3 tasks stay a few hundred rows


def test_bases_table_where_their_metrics_exist(lab, repo_params):
    lab_ = lab(gates=("sparsemax",), seeds=(0, 1), lm__pretrain=repo_params["lm"]["train"])
    lab_.fill("lm", {"linear-sparsemax-e8": [100.0, 101.0], "dense": [120.0, 121.0]})
    lab_.references("lm", LM_REFERENCES)
    assert study.base_sizes(lab_.params, "lm") == ["e8", "dense"]
    write(study.base_paths("lm", "e8").train, {"steps": 150, "best_val_loss": 5.25, "wall_s": 12.5, "lr": 0.1})
    summary = report(lab_.params, plots_dir=None)  # base-dense has no metrics: skipped, not an error
    assert summary["lm"]["bases"] == {"e8": {"steps": 150, "best_val_loss": 5.25, "wall_s": 12.5}}
    md = _summary_md()
    assert "### lm: bases (pretraining)" in md and _row(md, "lm-e8") == ["lm-e8", "150", "5.25", "12.5"]
    assert "lm-dense" not in md


# ------------------------------------------------------------------ load CV of soft routing, the benchmark
def test_soft_routing_load_cv_is_not_shown_or_ranked(lab):
    lab_ = lab(gates=("softmax-soft", "softmax-top2", "sparsemax"))
    for name, load_cv in (
        ("linear-softmax-soft-e8", 0.0),
        ("linear-softmax-top2-e8", 0.0),
        ("linear-sparsemax-e8", 0.5),
    ):
        for seed in lab_.params.seeds:
            lab_.write_run("lm", name, seed, 100.0 + seed, load_cv=load_cv)
    lab_.fill("lm", {"dense": [120.0, 121.0, 122.0]})
    lab_.references("lm", LM_REFERENCES)
    summary = report(lab_.params, plots_dir=None)
    md = _summary_md()
    assert "load_cv" not in summary["lm"]["variants"]["linear-softmax-soft-e8"]["metrics"]
    assert _column(md, "lm", "linear-softmax-soft-e8", "load CV") == "–"
    # decided by the config, not the value: a top-2 gate measuring 0 keeps its 0, a sparse soft gate its CV
    assert _column(md, "lm", "linear-softmax-top2-e8", "load CV") == "0 ± 0"
    assert _column(md, "lm", "linear-sparsemax-e8", "load CV") == "0.5 ± 0"
    assert _column(md, "lm", "linear-sparsemax-e8", "entropy / ln E") == "0.8 ± 0"
    assert "not comparable across gate types" in md


def test_forward_ms_comes_from_the_matching_benchmark_only(lab):
    lab_ = lab(gates=("sparsemax",), seeds=(0,))
    lab_.fill("lm", {"linear-sparsemax-e8": [101.0], "dense": [131.0]}, forward_ms=999.0)  # eval's is not read
    lab_.references("lm", LM_REFERENCES)
    bench = Path("metrics/bench/lm/linear-sparsemax-e8.json")
    write(bench, {"forward_ms": 4.5})
    metrics = report(lab_.params, plots_dir=None)["lm"]["variants"]["linear-sparsemax-e8"]["metrics"]
    assert metrics["forward_ms"] == {"mean": 4.5, "std": 0.0, "ci95": None, "n": 1}  # one measurement
    assert _column(_summary_md(), "lm", "linear-sparsemax-e8", "forward ms") == "4.5"
    config = lab_.config(lab_.variant("lm", "linear-sparsemax-e8"), 0)
    write(bench.with_name("linear-sparsemax-e8.meta.json"), {"config": {**config, "model": {"d_model": 999}}})
    summary = report(lab_.params, plots_dir=None)
    assert "forward_ms" not in summary["lm"]["variants"]["linear-sparsemax-e8"]["metrics"]
    assert "forward ms: – for linear-sparsemax-e8: the benchmark JSON measured another config" in _summary_md()


# ------------------------------------------------------------------ metrics from the TASKS registry
class _Toy(Task):
    name = "toy"
    metrics = (Metric("bleu", "BLEU", True), Metric("loss", "loss", False))
    count_key = "sentences"


def test_columns_come_from_the_task_class(monkeypatch):
    monkeypatch.setitem(TASKS.classes, "toy", _Toy)
    quality, count = task_columns("toy")
    assert [(c.key, c.label, c.higher_is_better) for c in quality] == [
        ("test_bleu", "BLEU", True),
        ("test_loss", "loss", False),
    ]
    assert (count.key, count.label) == ("test_sentences", "n test (sentences)")


# ------------------------------------------------------------------ figures' data
def _run(shares: list[list[float]], modules: list[str] | None = None, seed: int = 0) -> Run:
    modules = modules or [f"blocks.{i}.ffn" for i in range(len(shares))]
    layers = [{"module": m, "expert_share": s} for m, s in zip(modules, shares)]
    variant = study.Variant("lm", "linear", "sparsemax", "e8")
    return Run(variant, seed, {}, layers, {}, (), Path("live"), True)


def test_expert_load_sorts_each_run_before_averaging():
    # the busiest expert is index 0 in one run and index 3 in the other: indices are arbitrary per run
    runs = [_run([[0.7, 0.1, 0.1, 0.1]], seed=0), _run([[0.1, 0.1, 0.1, 0.7]], seed=1)]
    (label, profile), *rest = sorted_load_profile(runs)
    assert not rest and label == "layer 0"
    np.testing.assert_allclose(profile, [0.7, 0.1, 0.1, 0.1])  # by index it would be [0.4, 0.1, 0.1, 0.4]
    runs = [_run([[0.5, 0.3, 0.2, 0.0], [0.25] * 4]), _run([[0.0, 0.2, 0.4, 0.4], [0.1, 0.2, 0.3, 0.4]])]
    profiles = sorted_load_profile(runs)
    assert [label for label, _ in profiles] == ["layer 0", "layer 1"]
    np.testing.assert_allclose(profiles[0][1], [0.45, 0.35, 0.2, 0.0])
    np.testing.assert_allclose(profiles[1][1], [0.325, 0.275, 0.225, 0.175])


def test_quality_panel_spans_the_models_and_the_bar_and_names_what_is_off_it(lab):
    """The unigram (400) would squeeze models 2 % apart into one pixel row: the y-axis spans the models'
    intervals and the bar (150), the trigram inside it is drawn, the unigram is named in the corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moelab.report.data import load
    from moelab.report.plots import _colours, _quality_panel

    lab_ = lab()
    lab_.references("lm", LM_REFERENCES)
    lab_.fill("lm", {"linear-sparsemax-e8": [100, 101, 102], "linear-softmax-top2-e8": [104, 105, 106]})
    lab_.fill("lm", {"dense": [108, 109, 110]})
    task = load(lab_.params)["lm"]
    column = next(q for q in task.quality if q.key == "test_ppl")
    models = [v for v in task.variants if "flops_per_token" in task.cells[v]]
    fig, ax = plt.subplots()
    _quality_panel(ax, task, column, models, _colours(models), {task.presets[v]: "o" for v in models})
    low, high = ax.get_ylim()
    lowest = min(task.cells[v]["test_ppl"]["mean"] - task.cells[v]["test_ppl"]["ci95"] for v in models)
    assert low < lowest and 150.0 < high < 400.0
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [150.0, 140.0]
    assert "unigram (trivial): 400" in "".join(t.get_text() for t in ax.texts)
    plt.close(fig)


def test_moe_layers_are_labelled_encoder_decoder_or_layer():
    assert layer_label("hf.encoder.block.1.layer.1.mlp.moe", 0) == "encoder 1"
    assert layer_label("hf.decoder.block.1.layer.2.mlp.moe", 1) == "decoder 1"
    assert layer_label("blocks.1.ffn", 0) == "layer 1"
    assert layer_label(None, 2) == "layer 2"
    runs = [
        _run([[0.5, 0.5], [0.5, 0.5]], ["hf.encoder.block.0.layer.1.mlp.moe", "hf.decoder.block.0.layer.2.mlp.moe"])
    ]
    assert [label for label, _ in sorted_load_profile(runs)] == ["encoder 0", "decoder 0"]


def test_markdown_of_empty_study_has_the_rule_only():
    md = markdown({})
    assert "What the data supports" in md and "fixed on 2026-12-05, before the study at this recipe was run" in md


def test_roots_move_the_trees(lab, tmp_path):
    lab_ = lab(gates=("sparsemax",), seeds=(0,))
    lab_.fill("lm", {"linear-sparsemax-e8": [101.0], "dense": [131.0]})
    lab_.references("lm", LM_REFERENCES)
    Path("metrics/study").rename(tmp_path / "elsewhere")
    roots = Roots(study=tmp_path / "elsewhere")
    assert load(lab_.params, roots)["lm"].cells[lab_.variant("lm", "dense")]["test_ppl"]["mean"] == 131.0
