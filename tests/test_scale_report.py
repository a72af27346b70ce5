"""The budget study's report (moelab/scale_report.py): runs named back into variant x width, one table row per
run in a fixed order, the study's references beside them, and the committed scale/metrics.md made from the
committed scale/metrics/*.json."""

import json
from pathlib import Path

import pytest

from moelab.errors import DataError
from moelab.scale_report import reference_lines, runs_frame, table, write_report

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, steps: int, accuracy: float) -> dict:
    return {"name": name, "steps": steps, "train_flops": 1e9 * steps, "train_s": steps / 10, "test_accuracy": accuracy}


@pytest.fixture
def results(tmp_path) -> Path:
    """Two from-scratch files and a fine-tune curve of a classification budget study, written by hand."""
    out = tmp_path / "metrics"
    out.mkdir()
    scratch = {"small": [("dense-small", 0.70), ("softmax-top2-small", 0.72)], "medium": [("dense-medium", 0.71)]}
    for width, runs in scratch.items():
        rows = [_run(f"{name}-{steps}", steps, acc + steps / 1e4) for name, acc in runs for steps in (500, 250)]
        (out / f"classification-{width}.json").write_text(json.dumps({"task": "classification", "runs": rows}))
    tuned = [_run(f"finetune-attention-sparsemax-{steps}", steps, 0.75) for steps in (25, 50)]
    (out / "classification-finetune.json").write_text(json.dumps({"task": "classification", "runs": tuned}))
    return out


def test_runs_are_named_back_into_kind_variant_and_width(results):
    frame = runs_frame(results)
    assert len(frame) == 6 + 2
    scratch = frame[frame["kind"] == "scratch"]
    assert set(zip(scratch["variant"], scratch["width"], strict=True)) == {
        ("dense", "small"),
        ("softmax-top2", "small"),
        ("dense", "medium"),
    }
    tuned = frame[frame["kind"] == "finetune"]
    assert set(tuned["variant"]) == {"attention-sparsemax"} and set(tuned["width"]) == {"base"}
    assert sorted(tuned["steps"]) == [25, 50]


def test_the_table_has_a_row_per_run_in_a_fixed_order(results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no metrics/study/<task>/references.json here: no reference line
    lines = table(runs_frame(results), "classification").splitlines()
    assert lines[0] == "| kind | variant | width | steps | training FLOPs | train s | test accuracy |"
    rows = [line.split(" | ")[:4] for line in lines[2:]]
    assert rows == [
        ["| finetune", "attention-sparsemax", "base", "25"],
        ["| finetune", "attention-sparsemax", "base", "50"],
        ["| scratch", "dense", "medium", "250"],
        ["| scratch", "dense", "medium", "500"],
        ["| scratch", "dense", "small", "250"],
        ["| scratch", "dense", "small", "500"],
        ["| scratch", "softmax-top2", "small", "250"],
        ["| scratch", "softmax-top2", "small", "500"],
    ]
    assert lines[-1].endswith("| 0.77 |")  # softmax-top2 small at 500 steps: 0.72 + 500 / 1e4
    assert "References" not in "\n".join(lines)


def test_references_are_the_studys_test_headline_values(monkeypatch):
    monkeypatch.chdir(ROOT)
    committed = json.loads((ROOT / "metrics/study/classification/references.json").read_text())
    assert reference_lines("classification") == {name: ref["test_accuracy"] for name, ref in committed.items()}
    assert set(reference_lines("lm")) >= {"unigram", "kn-bigram", "kn-trigram"}  # the char 5-gram has no ppl


def test_the_committed_report_is_made_from_the_committed_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the references are read from metrics/study/, as the stage does
    md, plots = tmp_path / "metrics.md", tmp_path / "plots"
    write_report(None, ROOT / "scale" / "metrics", md, plots)
    assert md.read_text() == (ROOT / "scale" / "metrics.md").read_text()
    for task in ("lm", "summarization", "classification"):
        assert (plots / f"{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.xfail(
    strict=True,
    reason="table() adds the LM's test_bpc column whenever the frame holds any LM run, so the classification and "
    "summarisation tables carry a column of nan; the fix is in scale_report.py, whose hash every scale stage "
    "depends on (fingerprints/code/scale.json): it waits for the next re-run of the budget study",
)
def test_only_the_lm_table_has_a_bits_per_character_column():
    frame = runs_frame(ROOT / "scale" / "metrics")
    assert "test_bpc" not in table(frame, "classification").splitlines()[0]


def test_no_results_is_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no budget-study results in .*: run `dvc repro scale/dvc.yaml`"):
        write_report(None, tmp_path, tmp_path / "metrics.md", tmp_path / "plots")
