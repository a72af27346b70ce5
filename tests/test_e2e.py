"""End to end: `dvc repro`, `dvc exp run -S router=attention`, `dvc metrics diff` in a fresh git repo."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny(params: dict) -> dict:
    params.update(tasks=["lm"], routers=["linear"], gates=["softmax-top2"], models=["e8"], seeds=[0])
    params["lm"]["data"].update(max_records=40, vocab_size=300, seq_len=32)
    params["lm"]["train"].update(steps=6, batch_size=4, eval_every=3, eval_batches=2, checkpoint_every=3, warmup_steps=2)
    params["lm"]["evaluate"].update(max_batches=2, samples=1, sample_tokens=8)
    params["benchmark"].update(batch_size=2, repeats=1, warmup=1)
    return params


def sh(cmd: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "data" / "corpora", repo / "data" / "corpora")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    params = tiny(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q && dvc init -q && dvc config core.analytics false && dvc config core.check_update false", repo)
    sh("git add -A && git commit -qm init", repo)
    return repo


def test_repro_writes_metrics_for_every_variant(lab):
    out = sh("dvc repro", lab)
    assert "train@lm-linear-softmax-top2-e8-0" in out and "train-dense@lm-0" in out
    summary = json.loads((lab / "metrics" / "summary.json").read_text())
    for gating in ("linear-softmax-top2", "dense"):
        cell = summary["lm"][gating]["e8"]
        assert cell["test_ppl"]["n"] == 1 and cell["test_ppl"]["mean"] > 1
    assert (lab / "metrics" / "summary.md").read_text().count("| linear-softmax-top2 | e8 |") == 1
    assert "is up to date" in sh("dvc repro", lab) or "didn't change" in sh("dvc repro", lab)
    sh("git add -A && git commit -qm baseline", lab)


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
