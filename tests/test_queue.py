"""Parallel DVC experiments: `dvc exp run --queue` + `dvc queue start -j 2` in a fresh git repo.

Two queued experiments run at once, each in its own temp workspace (.dvc/tmp/exps), where the
`exp` stage writes models/exp and metrics/exp: each must succeed with its own
metrics, `dvc exp show --csv` must list router/norm/top_k/model beside them, and the main workspace
must be left as it was. Only `study/dvc.yaml:prepare@lm` is reproduced for the baseline and the experiments target
`exp` (its upstream: prepare@lm and the fingerprints), so the study stages never run: ~40 s on 2 cores.
"""

import csv
import hashlib
import io
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from labrepo import OFFLINE_ENV, make_lab

ENV = {
    **OFFLINE_ENV,
    "OMP_NUM_THREADS": "1",
}  # two trainings share the cores: no thread oversubscription
# --keep / --drop regexes are matched from the start of the column name (re.match)
KEEP = "Experiment|rev|State|^router$|^norm$|^top_k$|^model$|test_loss$|test_ppl$|parameters$"


def col(row: dict, name: str) -> str:
    (key,) = [k for k in row if k == name or k.endswith((":" + name, "/" + name))]
    return row[key]


def sh(cmd: str, cwd: Path, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def digest(repo: Path) -> dict[str, str]:
    """Every file of the workspace except git's and DVC's own state."""
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(repo).parts)
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    repo = make_lab(tmp_path_factory.mktemp("queue"), sh)
    sh("dvc repro -q study/dvc.yaml:pretrain@lm && git add -A && git commit -qm baseline", repo)  # data + base
    yield repo
    subprocess.run("dvc queue stop", shell=True, cwd=repo, env=ENV, capture_output=True, timeout=60)


@pytest.mark.slow
def test_two_queued_experiments_run_in_parallel_each_in_its_own_workspace(lab):
    before = digest(lab)
    out = sh("dvc exp run --queue exp -S 'router=linear,attention' -S top_k=1", lab)
    assert out.count("Queued experiment") == 2, out
    assert "Started '2' new experiments task queue workers" in sh("dvc queue start -j 2", lab)
    deadline = time.time() + 240
    while True:
        status = sh("dvc queue status", lab)
        if not any(s in status for s in ("Queued", "Running")) or time.time() > deadline:
            break
        time.sleep(2)
    tasks = [
        line.split() for line in status.splitlines() if line[:1].isalnum() and not line.startswith(("Task", "Worker"))
    ]
    assert len(tasks) == 2 and all(t[-1] == "Success" for t in tasks), status
    for name in (t[1] for t in tasks):
        log = sh(f"dvc queue logs {name}", lab)
        assert "Running stage 'exp'" in log, log
        assert "Running stage 'study/dvc.yaml:" not in log, log

    rows = list(csv.DictReader(io.StringIO(sh(f"dvc exp show --no-pager --csv --drop '.*' --keep '{KEEP}'", lab))))
    assert {"router", "norm", "top_k", "model"} <= set(rows[0]), rows[0].keys()
    exps = {r["router"]: r for r in rows if r["Experiment"]}
    assert set(exps) == {"linear", "attention"}, rows
    for r in exps.values():
        assert r["State"] == "Success" and r["top_k"] == "1" and r["norm"] == "softmax" and r["model"] == "e8"
        assert float(col(r, "test_ppl")) > 1 and float(col(r, "test_loss")) > 0
    # the metrics are each experiment's own: the attention router has W_q (d x d per MoE layer) more
    d, layers = 64, 2
    assert (
        int(float(col(exps["attention"], "parameters"))) - int(float(col(exps["linear"], "parameters")))
        == layers * d * d
    )
    assert col(exps["linear"], "test_ppl") != col(exps["attention"], "test_ppl")

    # the main workspace is untouched: same files, nothing to commit, no models/exp or metrics/exp written
    assert digest(lab) == before
    assert sh("git status --porcelain", lab).strip() == ""
    assert not (lab / "models" / "exp").exists() and not (lab / "metrics" / "exp").exists()
    assert yaml.safe_load((lab / "params.yaml").read_text())["top_k"] == 2
    assert not list((lab / ".dvc" / "tmp" / "exps").glob("tmp*")), "temp workspaces left behind"
