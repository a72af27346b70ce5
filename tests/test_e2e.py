"""End to end: `dvc repro`, `dvc exp run -S router=attention`, `dvc metrics diff` in a fresh git repo."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from labrepo import make_lab


def sh(cmd: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return make_lab(tmp_path_factory.mktemp("lab"), sh)


def test_repro_writes_metrics_for_every_variant(lab):
    out = sh("dvc repro", lab)
    assert "train@lm-linear-softmax-top2-e8" in out and "train-dense@lm" in out and "reference@lm" in out
    summary = json.loads((lab / "metrics" / "summary.json").read_text())
    for gating in ("linear-softmax-top2", "dense"):
        cell = summary["lm"][gating]["e8"]
        assert cell["test_ppl"]["n"] == 1 and cell["test_ppl"]["mean"] > 1
    assert (lab / "metrics" / "summary.md").read_text().count("| linear-softmax-top2 | e8 |") == 1
    figures = json.loads(sh("dvc plots show --json", lab))["data"]
    for name in ("loss_curves", "quality_flops", "expert_load", "experts_per_token"):
        png = lab / "plots" / f"lm_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/lm_{name}.png" in figures
    assert any(k.endswith("/live/plots/metrics/train/loss.tsv") for k in figures)  # DVCLive curves
    again = sh("dvc repro", lab)
    assert "Running stage 'machine'" in again, "the machine fingerprint is re-read on every repro"
    assert "Running stage 'benchmark'" not in again, "same machine, code and params: nothing to re-measure"
    assert "Running stage 'train@" not in again and "Running stage 'evaluate@" not in again
    sh("git add -A && git commit -qm baseline", lab)


def test_benchmark_stage_measures_every_variant_and_the_layer(lab):
    for variant in ("linear-softmax-top2-e8", "dense"):
        bench = json.loads((lab / "metrics" / "bench" / "lm" / f"{variant}.json").read_text())
        assert bench["flops_analytic_over_counted"] == pytest.approx(1.0, rel=1e-9)
        assert bench["train_step_p90_ms"] >= bench["train_step_ms"] > 0 and bench["repeats"] == 10
        assert bench["device"] == "cpu" and bench["threads"] >= 1
        meta = json.loads((lab / "metrics" / "bench" / "lm" / f"{variant}.meta.json").read_text())
        assert meta["versions"]["torch"]
    layer = json.loads((lab / "metrics" / "bench_layer.rows.json").read_text())
    assert {r["impl"] for r in layer["rows"]} == {"dense", "moelab", "naive", "hf-switch"}
    table = (lab / "metrics" / "bench.md").read_text()
    assert "| lm | linear-softmax-top2-e8 |" in table and "| 64 | 1 | hf-switch |" in table


def test_exp_run_changes_only_the_experiment_and_metrics_diff_shows_it(lab):
    out = sh("dvc exp run -S router=attention", lab)
    assert "Running stage 'exp-train'" in out and "Running stage 'exp-evaluate'" in out
    assert "Running stage 'train@" not in out, "the study must not re-run for a one-experiment change"
    shown = sh("dvc exp show --no-pager --csv", lab)
    header, *rows = shown.strip().splitlines()
    assert "router" in header and any(",attention," in r for r in rows)
    diff = sh("dvc metrics diff", lab)
    assert "metrics/exp/eval.json" in diff and "test_ppl" in diff
    assert yaml.safe_load((lab / "params.yaml").read_text())["router"] == "attention"
