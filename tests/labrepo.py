"""A throwaway moelab DVC project (git + dvc init) with tiny params, for end-to-end tests and
scripts/bench_pipeline.py: one LM cell (`tiny`), one cell of every task (`tiny_tasks`), or every
cell of the default study, each tiny (`tiny_study`: the same stages, lock file and outputs as the
real study, in minutes). The lab runs its own copy of the sources (PYTHONPATH=<lab>/src: `lab_env`).

`install_shim` puts a `moelab` first on PATH that runs the real command and appends what it imported
and how long each part took to a JSON-lines log (moelab_shim.py): how the tests see what each stage's
command really imports, and how the script splits a `dvc repro` into start-up, imports, work and
DVC's own time.
"""

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {  # what every lab command runs with: a git identity, no hub downloads
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
# what a lab copies from the repo besides src/ and the corpora (those that exist in the source)
PROJECT_FILES = ("dvc.yaml", "study/dvc.yaml", "fingerprints/dvc.yaml", "layer/dvc.yaml", ".gitignore", ".dvcignore")

TINY_TASKS = {  # each task's data / evaluate shrunk to seconds (train is shrunk alike for every task)
    "lm": dict(
        data=dict(max_records=40, vocab_size=300, seq_len=32),
        evaluate=dict(max_batches=2, samples=1, sample_tokens=8),
    ),
    "summarization": dict(
        data=dict(max_records=40, vocab_size=300, max_source_len=32, max_target_len=8),
        evaluate=dict(batch_size=4, max_batches=1, samples=1, max_new_tokens=6),
    ),
    "classification": dict(
        data=dict(max_records=60, vocab_size=300, seq_len=24),
        evaluate=dict(batch_size=8, max_batches=1, samples=1),
    ),
}
ONE_CELL = dict(routers=["linear"], gates=["softmax-top2"], models=["e8"], seeds=[0])


def shrink(params: dict, tasks: list[str]) -> dict:
    """Tiny data, training, evaluation and benchmark for `tasks`; the study lists are left alone."""
    for task in tasks:
        for section, values in TINY_TASKS[task].items():
            params[task][section].update(values)
        for section in ("pretrain", "train"):  # the bases and each variant's fine-tune
            if params[task].get(section):
                params[task][section].update(
                    steps=6, batch_size=4, eval_every=3, eval_batches=2, checkpoint_every=3, warmup_steps=2
                )
    params["benchmark"].update(batch_size=2, repeats=10, warmup=1)
    params["benchmark"]["layer"].update(tokens=[64], d_model=32, d_ff=64, n_experts=4, repeats=10, warmup=1)
    return params


def tiny(params: dict) -> dict:
    """The default params shrunk to one LM cell that trains in seconds."""
    params.update(tasks=["lm"], **ONE_CELL)
    return shrink(params, ["lm"])


def tiny_tasks(params: dict) -> dict:
    """One tiny cell of every task (each command then runs every task's code)."""
    params.update(ONE_CELL)
    return shrink(params, params["tasks"])


def tiny_study(params: dict) -> dict:
    """Every cell of the default study (task x router x gate x model x seed), each tiny."""
    return shrink(params, params["tasks"])


def make_lab(
    repo: Path, sh: Callable[[str, Path], str], shape: Callable[[dict], dict] = tiny, source: Path = ROOT
) -> Path:
    """Copy the sources, corpora and pipeline of `source` (the repo, or a checkout of another
    revision) into `repo`, write the params `shape` makes of its params.yaml, git + dvc init with
    its .dvc/config, commit."""
    shutil.copytree(source / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(source / "data" / "corpora", repo / "data" / "corpora")
    for name in PROJECT_FILES:
        if (source / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, repo / name)
    params = shape(yaml.safe_load((source / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q && dvc init -q", repo)
    shutil.copy(source / ".dvc" / "config", repo / ".dvc" / "config")
    if (source / ".dvcignore").exists():  # again: `dvc init` writes an empty one
        shutil.copy(source / ".dvcignore", repo / ".dvcignore")
    sh("git add -A && git commit -qm init", repo)
    return repo


def lab_env(repo: Path, **extra: str) -> dict:
    """The environment a lab's commands run in: its own sources, offline hubs, a git identity."""
    return {**OFFLINE_ENV, "PYTHONPATH": str(repo / "src"), **extra}


def lab_sh(cmd: str, cwd: Path, **env: str) -> str:
    """Run a shell command in a lab (lab_env plus `env`); fail with its output's tail; return stdout + stderr."""
    proc = subprocess.run(
        cmd, shell=True, cwd=cwd, env=lab_env(cwd, **env), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def install_shim(bin_dir: Path) -> Path:
    """Write a `moelab` into bin_dir that runs tests/moelab_shim.py (put bin_dir first on PATH and
    set MOELAB_SHIM_LOG): the real command, plus one JSON line of its imports and timings."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "moelab"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).with_name("moelab_shim.py")}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher
