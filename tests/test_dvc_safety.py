"""The README's promises on the pipeline path (`dvc repro`, `dvc exp run`), in a throwaway git + DVC
project (tests/labrepo.py): a bad value changes no file, an interrupted `dvc repro` resumes from its
last checkpoint, a changed config starts fresh (old checkpoints moved aside, one line), DVC caches
exactly the final outputs, no study name reaches a shell; and the repository's own dvc.lock was
produced by the committed code and params.

DVC deletes a stage's outputs before running its command unless they are `persist: true`, and pastes
`${...}` values into a shell command: these tests run the repository's real dvc.yaml, so they check
what DVC does with it, not what moelab would do alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from labrepo import OFFLINE_ENV, make_lab

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "lm/linear-softmax-top2-e8"  # the lab's one MoE variant (and lm/dense)
STAGE = "study/dvc.yaml:task@lm"  # trains, then evaluates, every variant of the task
ENV = {
    **OFFLINE_ENV,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


def run(cmd: str | list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert not check or r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def sh(cmd: str, cwd: Path) -> str:
    r = run(cmd, cwd)
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return make_lab(tmp_path_factory.mktemp("lab"), sh)


def set_train(lab: Path, **train) -> None:
    """lm.train values of the lab's params.yaml, committed (so that `git status` shows only what runs write)."""
    params = yaml.safe_load((lab / "params.yaml").read_text())
    params["lm"]["train"].update(train)
    (lab / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git add -A && git commit -qm params --allow-empty", lab)


def outputs(lab: Path) -> dict[str, bytes]:
    """Every file under models/ and metrics/ (but directory locks, which name their last holder)."""
    return {
        str(f.relative_to(lab)): f.read_bytes()
        for top in ("models", "metrics")
        for f in sorted((lab / top).rglob("*"))
        if f.is_file() and f.name != ".lock"
    }


def checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def repro_until(lab: Path, sig: int, after_step: int) -> tuple[int, str]:
    """Start `dvc repro STAGE` in its own process group, wait for a checkpoint past `after_step`, send
    `sig` to the whole group (DVC, its shell, moelab: what Ctrl-C or a killed terminal does)."""
    latest = lab / "models" / VARIANT / "s0" / "latest.pt"
    proc = subprocess.Popen(
        ["dvc", "repro", STAGE],
        cwd=lab,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and (checkpoint_step(latest) or 0) <= after_step:
        time.sleep(0.01)
    assert proc.poll() is None, f"dvc repro ended before it could be interrupted:\n{proc.stdout.read()}"
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    return checkpoint_step(latest), out


def stage_lock(lab: Path, stage: str) -> dict:
    """A stage's entry in the lock file beside its dvc.yaml ("study/dvc.yaml:task@lm" or "exp")."""
    dvc_file, _, name = stage.rpartition(":")
    lock = lab / Path(dvc_file or "dvc.yaml").with_suffix(".lock")
    return yaml.safe_load(lock.read_text())["stages"][name]


# ---------------------------------------------------------------- interrupted dvc repro
def test_interrupted_repro_resumes_from_its_last_checkpoint(lab):
    """Ctrl-C, then SIGKILL, of a `dvc repro` mid-training: DVC must not delete the checkpoints
    (persist), and the next `dvc repro` resumes from the last one instead of step 0."""
    set_train(lab, steps=150, checkpoint_every=10, eval_every=50, lr=0.003)
    interrupted_at, out = repro_until(lab, signal.SIGINT, after_step=0)
    assert interrupted_at and f"interrupted at step {interrupted_at} of 150" in out, out
    killed_at, out = repro_until(lab, signal.SIGKILL, after_step=interrupted_at)
    assert killed_at > interrupted_at, out
    out = sh(f"dvc repro {STAGE}", lab)
    train = json.loads((lab / "metrics" / "study" / VARIANT / "train" / "s0.json").read_text())
    assert train["resumed_from_step"] == killed_at and train["steps"] == 150, out
    assert "started fresh" not in out
    assert "up to date" in sh(f"dvc status {STAGE}", lab)


# ---------------------------------------------------------------- a changed config
def test_changed_config_starts_fresh_and_dvc_caches_only_the_final_outputs(lab):
    """A changed config on a models directory that holds a finished run: moelab moves the old run aside
    and starts fresh (one line), instead of refusing; DVC caches exactly the new checkpoints."""
    sh(f"dvc repro {STAGE}", lab)  # a finished run (nothing to do after the test above)
    old = (lab / "models" / VARIANT / "s0" / "latest.pt").read_bytes()
    set_train(lab, steps=20, checkpoint_every=10, eval_every=10, lr=0.002)
    out = sh(f"dvc repro {STAGE}", lab)
    fresh = [line for line in out.splitlines() if "started fresh" in line and f"models/{VARIANT}/" in line]
    assert len(fresh) == 1 and "another configuration" in fresh[0] and "in the checkpoint vs" in fresh[0], out
    assert f"models/{VARIANT}/.s0.previous" in fresh[0], out
    train = json.loads((lab / "metrics" / "study" / VARIANT / "train" / "s0.json").read_text())
    assert train["resumed_from_step"] == 0 and train["steps"] == 20
    assert (lab / "models" / VARIANT / ".s0.previous" / "latest.pt").read_bytes() == old  # moved aside, not lost

    (models,) = [o for o in stage_lock(lab, STAGE)["outs"] if o["path"] == "models/lm"]
    manifest = lab / ".dvc" / "cache" / "files" / "md5" / models["md5"][:2] / models["md5"][2:]
    cached = {entry["relpath"] for entry in json.loads(manifest.read_text())}
    variants = ("linear-softmax-top2-e8", "dense")
    runs = {f"{v}/s0/{checkpoint}" for v in variants for checkpoint in ("latest.pt", "best.pt")}
    assert cached == runs, "DVC cached moelab's lock or a moved-aside run"
    assert "up to date" in sh(f"dvc status {STAGE}", lab)
    changed = sh("git status --porcelain --untracked-files=all", lab).splitlines()
    assert not [line for line in changed if ".previous/" in line or line.endswith("/.lock")], changed


# ---------------------------------------------------------------- a bad value
@pytest.mark.parametrize("value", ["top_k=9", "lm.evaluate.top_p=0"])
def test_bad_exp_value_changes_no_file(lab, value):
    """`dvc exp run -S <bad value>` fails at validation and leaves every output byte-identical
    (DVC removes a stage's outputs before running it unless they persist). The experiment's stages
    are targeted so that the stage the value belongs to is the one that runs."""
    set_train(lab, steps=6, checkpoint_every=3, eval_every=3, lr=0.003)
    sh("dvc repro exp && git add -A && git commit -qm exp --allow-empty", lab)
    before = outputs(lab)
    assert any(k.startswith("models/exp/") for k in before) and "metrics/exp/train.meta.json" in before
    r = run(["dvc", "exp", "run", "-S", value, "exp"], lab, check=False)
    key = value.split("=")[0]
    assert r.returncode != 0 and f"error: params.yaml: {key} = " in r.stdout + r.stderr, r.stdout + r.stderr
    sh("git checkout -- params.yaml dvc.lock", lab)  # a failed workspace experiment leaves params.yaml edited
    assert outputs(lab) == before


EXPERIMENT_KEYS = {"task", "router", "norm", "top_k", "model", "seed"}  # what `dvc exp run -S` changes


def test_the_check_covers_every_key_but_the_experiments_and_the_experiment_loses_no_output():
    """The params check (run before any stage that reads what it validates) depends on every
    top-level key of params.yaml but the experiment's own, so `dvc exp run -S router=...` does not
    pay for it; the `exp` stage validates those keys itself, before it writes anything, and DVC
    removes none of its outputs first because every one of them persists."""
    check = yaml.safe_load((ROOT / "fingerprints" / "dvc.yaml").read_text())["stages"]["check"]
    keys = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(check["params"]) == keys - EXPERIMENT_KEYS
    exp = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["exp"]
    assert set(exp["params"]) >= EXPERIMENT_KEYS
    outputs = [entry for kind in ("outs", "metrics", "plots") for entry in exp[kind]]
    assert all(opts.get("persist") for entry in outputs for opts in entry.values()), outputs


# ---------------------------------------------------------------- shell injection through a study name
@pytest.mark.parametrize(
    "key,value,stage",
    [
        ("routers", "linear;touch marker;#", "study/dvc.yaml:task@lm"),
        ("routers", "linear';touch marker;'", "study/dvc.yaml:task@lm"),
    ],
)
def test_a_study_name_never_reaches_a_shell(lab, key, value, stage):
    """A study list value holding shell syntax never runs: the study's stage pastes no router, gate or
    model name into its command (it reads them from params.yaml), and params.yaml is validated before
    the stage runs, also when the stages upstream of it are up to date. (The one pasted value, a task
    name, is refused by DVC itself unless it is a key of params.yaml.)"""
    sh("dvc repro study/dvc.yaml:prepare@lm", lab)
    params = yaml.safe_load((lab / "params.yaml").read_text())
    params[key] = [value]
    (lab / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        r = run(["dvc", "repro", stage.format(value)], lab, check=False)
        log = r.stdout + r.stderr
        assert r.returncode != 0 and f"params.yaml: {key}[0] = " in log and "is not allowed" in log, log
        assert not [p for p in lab.rglob("marker*")], f"the shell ran a command hidden in {key}: {value!r}\n{log}"
    finally:
        sh("git checkout -- params.yaml", lab)


# ---------------------------------------------------------------- the repository's own dvc.lock
def test_committed_dvc_lock_matches_the_code_and_params():
    """The committed dvc.lock records, for every stage, the hash of each code dependency and the value
    of each param it read: the committed metrics were produced by exactly the committed code and
    params only if `dvc status` reports none of them changed (data and model outputs, which a fresh
    clone does not have, are not compared; deps produced by another stage are checked through it)."""
    pytest.importorskip("dvc")
    git = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *WATCHED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if git.returncode != 0 or not (ROOT / ".dvc").is_dir() or not (ROOT / "dvc.lock").is_file():
        pytest.skip("not a git + DVC checkout with a dvc.lock")
    if git.stdout.strip():
        pytest.skip(f"uncommitted changes to {', '.join(WATCHED)}: dvc.lock is checked on a clean checkout (CI)")
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr
    produced = set().union(*(recorded_outputs(ROOT / lock) for lock in LOCKS if (ROOT / lock).is_file()))
    stale = stale_stages(json.loads(status.stdout or "{}"), produced)
    assert not stale, (
        f"dvc.lock is stale: {len(stale)} stage(s) were not produced by the committed code and params, e.g. "
        + "; ".join(f"{name}: {', '.join(what[:4])}" for name, what in list(stale.items())[:5])
        + ". Re-run them (`dvc repro`) and commit dvc.lock with the metrics"
    )


# one beside each dvc.yaml
LOCKS = ("dvc.lock", "study/dvc.lock", "fingerprints/dvc.lock", "layer/dvc.lock", "claims/dvc.lock")
WATCHED = ("src", "params.yaml", "dvc.yaml", "study", "fingerprints", "layer", "claims", *LOCKS)


def recorded_outputs(lock: Path) -> set[str]:
    """Every output path a lock file records, as written there and relative to the repo root (a
    stage with `wdir: ..` records paths relative to its working directory, the root)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    paths = {out["path"] for stage in stages.values() for out in stage.get("outs", [])}
    beside = lock.parent.relative_to(ROOT) if lock.parent != ROOT and lock.is_relative_to(ROOT) else Path()
    return paths | {os.path.normpath(beside / path) for path in paths}


def stale_stages(status: dict, produced: set[str]) -> dict[str, list[str]]:
    """{stage: what differs} from `dvc status --json`: a changed command, a changed param, a changed
    (or unrecorded) dependency that no stage produces (code, bundled corpora)."""

    def produced_by_a_stage(path: str) -> bool:
        return any(path == out or path.startswith(out + "/") or out.startswith(path + "/") for out in produced)

    stale = {}
    for name, entries in status.items():
        what = []
        for entry in entries:
            if entry == "changed command":
                what.append("its command")
            if not isinstance(entry, dict):
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # a params file: {key: modified | new | deleted}
                    what += [f"param {key} {how}" for key, how in change.items()]
                elif not produced_by_a_stage(path):
                    what.append(f"{path} {change}")
        if what:
            stale[name] = what
    return stale


def test_stale_stages_reads_dvc_status():
    """stale_stages against a hand-written `dvc status --json` of a fresh clone."""
    status = {
        "machine": [{"changed outs": {"metrics/machine.json": "deleted"}}, "always changed"],
        "train@a": [
            {"changed deps": {"data/prepared/lm": "deleted", "src/moelab/moe": "modified"}},
            {"changed outs": {"models/a": "deleted"}},
        ],
        "train@b": [{"changed deps": {"data/prepared/lm": "deleted", "params.yaml": {"lm.train": "modified"}}}],
        "benchmark": [{"changed deps": {"data/prepared": "deleted", "metrics/machine.json": "deleted"}}],
        "prepare@lm": [{"changed outs": {"data/prepared/lm": "not in cache"}}, "changed command"],
        "report": [{"changed deps": {"src/moelab/report": "new"}}],
    }
    produced = {"data/prepared/lm", "metrics/machine.json", "models/a"}
    assert stale_stages(status, produced) == {
        "train@a": ["src/moelab/moe modified"],
        "train@b": ["param lm.train modified"],
        "prepare@lm": ["its command"],
        "report": ["src/moelab/report new"],
    }
