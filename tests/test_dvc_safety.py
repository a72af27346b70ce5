"""The README's promises on the pipeline path (`dvc repro`, `dvc exp run`), in a throwaway git + DVC
project (tests/labrepo.py): an interrupted `dvc repro` resumes from its last checkpoint, a changed
config starts fresh (old checkpoints moved aside, one line), DVC caches exactly the final outputs; an
edited or truncated result is recomputed (a narrowed study: tests/test_pipeline.py, on its lab); a
bad value (a data source, an empty or shell-laden study list, a bad experiment key) changes no file and
creates no directory, and nothing it holds reaches a shell; and the repository's own lock files were
produced by the committed code and params.

DVC deletes a stage's outputs before running its command unless they are `persist: true`, pastes
`${...}` values into shell commands, and `dvc exp run` checks the experiment's pipeline out before it
runs any stage: these tests run the repository's real pipeline files, so they check what DVC does with
them, not what moelab would do alone.
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
STAGE = "study/dvc.yaml:train@lm-linear-softmax-top2-e8"  # trains every seed of that variant
EVALUATE = "study/dvc.yaml:evaluate@lm-linear-softmax-top2-e8"
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


def set_params(lab: Path, edit) -> None:
    """Edit the lab's params.yaml and commit it (so that `git status` shows only what runs write)."""
    params = yaml.safe_load((lab / "params.yaml").read_text())
    edit(params)
    (lab / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git add -A && git commit -qm params --allow-empty", lab)


def set_train(lab: Path, **train) -> None:
    """lm.train values of the lab's params.yaml, committed."""
    set_params(lab, lambda p: p["lm"]["train"].update(train))


def outputs(lab: Path, tops: tuple[str, ...] = ("models", "metrics", "data/prepared")) -> dict[str, bytes]:
    """Every file under the outputs' roots (but directory locks, which name their last holder)."""
    return {
        str(f.relative_to(lab)): f.read_bytes()
        for top in tops
        for f in sorted((lab / top).rglob("*"))
        if f.is_file() and f.name != ".lock"
    }


def directories(lab: Path) -> set[str]:
    """Every directory of the lab but git's and DVC's own."""
    return {
        str(d.relative_to(lab))
        for d in lab.rglob("*")
        if d.is_dir() and not d.relative_to(lab).parts[0].startswith(".")
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
    """A stage's entry in the lock file beside its dvc.yaml ("study/dvc.yaml:train@..." or "exp")."""
    dvc_file, _, name = stage.rpartition(":")
    lock = lab / Path(dvc_file or "dvc.yaml").with_suffix(".lock")
    return yaml.safe_load(lock.read_text())["stages"][name]


# ---------------------------------------------------------------- interrupted dvc repro
@pytest.mark.slow
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
    assert "models/lm/.linear-softmax-top2-e8.s0.previous" in fresh[0], out
    train = json.loads((lab / "metrics" / "study" / VARIANT / "train" / "s0.json").read_text())
    assert train["resumed_from_step"] == 0 and train["steps"] == 20
    aside = lab / "models" / "lm" / ".linear-softmax-top2-e8.s0.previous"  # beside the stage's output, not in it
    assert (aside / "latest.pt").read_bytes() == old  # moved aside, not lost

    (models,) = [o for o in stage_lock(lab, STAGE)["outs"] if o["path"] == f"models/{VARIANT}"]
    manifest = lab / ".dvc" / "cache" / "files" / "md5" / models["md5"][:2] / models["md5"][2:]
    cached = {entry["relpath"] for entry in json.loads(manifest.read_text())}
    assert cached == {"s0/latest.pt", "s0/best.pt"}, "DVC cached moelab's lock or a moved-aside run"
    assert "up to date" in sh(f"dvc status {STAGE}", lab)
    changed = sh("git status --porcelain --untracked-files=all", lab).splitlines()
    assert not [line for line in changed if ".previous/" in line or line.endswith("/.lock")], changed


# ---------------------------------------------------------------- results DVC vouches for
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["edited", "truncated", "truncated-routing"])
def test_a_damaged_result_is_recomputed_and_the_report_stays(lab, damage):
    """A result changed behind DVC's back (an edited number, a file cut short) is an output that no longer
    matches the lock: `dvc repro` re-runs the stage that writes it, which recomputes it; the report is
    then rebuilt from the true value, and never left deleted."""
    set_train(lab, steps=6, checkpoint_every=3, eval_every=3, lr=0.003)
    sh("dvc repro", lab)
    result = (
        lab / "metrics" / "study" / VARIANT / "eval" / ("s0.routing.json" if damage.endswith("routing") else "s0.json")
    )
    true, summary = result.read_bytes(), (lab / "metrics" / "summary.md").read_bytes()
    if damage == "edited":
        values = json.loads(true)
        values["test_ppl"] = 111.0
        result.write_text(json.dumps(values))
    else:
        result.write_bytes(true[: len(true) // 2])
    out = sh("dvc repro", lab)
    assert f"Running stage '{EVALUATE}'" in out, out
    assert result.read_bytes() == true
    assert (lab / "metrics" / "summary.md").read_bytes() == summary
    assert "111" not in (lab / "metrics" / "summary.md").read_text()


# ---------------------------------------------------------------- a bad value
@pytest.mark.parametrize("value", ["top_k=9", "lm.evaluate.top_p=0"])
def test_bad_exp_value_changes_no_file(lab, value):
    """`dvc exp run -S <bad value>` fails at validation and leaves every output byte-identical
    (DVC removes a stage's outputs before running it unless they persist). The experiment's stage is
    targeted so that the stage the value belongs to is the one that runs."""
    set_train(lab, steps=6, checkpoint_every=3, eval_every=3, lr=0.003)
    sh("dvc repro exp && git add -A && git commit -qm exp --allow-empty", lab)
    before = outputs(lab)
    assert any(k.startswith("models/exp/") for k in before) and "metrics/exp/train/run.meta.json" in before
    r = run(["dvc", "exp", "run", "-S", value, "exp"], lab, check=False)
    key = value.split("=")[0]
    assert r.returncode != 0 and f"error: params.yaml: {key} = " in r.stdout + r.stderr, r.stdout + r.stderr
    sh("git checkout -- params.yaml dvc.lock", lab)  # a failed workspace experiment leaves params.yaml edited
    assert outputs(lab) == before


REFUSED = [  # (-S value, what the one error line names)
    ("lm.data.source=shakespear", "lm.data.source = 'shakespear' is not allowed (did you mean 'shakespeare'?)"),
    ("lm.data.source=../../etc/passwd", "lm.data.source = '../../etc/passwd' is not allowed"),
    ("tasks=[]", "tasks"),
    ("routers=[]", "routers"),
    ('tasks=["$(touch marker)/x"]', "tasks[0] = '$(touch marker)/x' is not allowed"),
    ("tasks=[\"lm'; touch marker; '\"]", "tasks[0] = "),
    ('routers=["linear;touch marker;#"]', "routers[0] = 'linear;touch marker;#' is not allowed"),
    ('gates=["$(touch marker)/softmax-top2"]', "gates[0] = "),
]


@pytest.mark.parametrize("value,names", REFUSED, ids=[v for v, _ in REFUSED])
def test_a_refused_value_changes_no_file_and_creates_no_directory(lab, value, names):
    """`dvc exp run -S <value>` with a value the check refuses: one error line naming the key; every
    output byte-identical (the prepared data too: DVC removes it neither before prepare runs nor when
    the experiment's pipeline, with other stages, is checked out), no new directory, nothing executed."""
    sh("dvc repro && git add -A && git commit -qm study --allow-empty", lab)
    before, dirs = outputs(lab), directories(lab)
    r = run(["dvc", "exp", "run", "-S", value], lab, check=False)
    log = r.stdout + r.stderr
    assert r.returncode != 0 and names in log, log
    errors = [line for line in log.splitlines() if "error" in line.lower() and "failed to reproduce" not in line]
    assert len(errors) == 1, log
    sh("git checkout -- params.yaml", lab)  # a failed workspace experiment leaves params.yaml edited
    assert outputs(lab) == before, "an output changed or vanished"
    assert directories(lab) == dirs, sorted(directories(lab) ^ dirs)
    assert not list(lab.rglob("marker*")), log


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
    outputs_ = [entry for kind in ("outs", "metrics", "plots") for entry in exp.get(kind, [])]
    assert all(opts.get("persist") for entry in outputs_ for opts in entry.values()), outputs_


# ---------------------------------------------------------------- the repository's own dvc.lock
def test_committed_dvc_lock_matches_the_code_and_params():
    """The committed dvc.lock records, for every stage, the hash of each code dependency and the value
    of each param it read: the committed metrics were produced by exactly the committed code and
    params only if `dvc status` reports none of them changed (data and model outputs, which a fresh
    clone does not have, are not compared; deps produced by another stage are checked through it). A stage
    of an on-demand pipeline that no lock records was not run at this commit and is not checked."""
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
    locks = [ROOT / lock for lock in LOCKS if (ROOT / lock).is_file()]
    produced = set().union(*(recorded_outputs(lock) for lock in locks))
    committed = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    recorded = set().union(*(recorded_stages(lock) for lock in locks))
    report = json.loads(status.stdout or "{}")
    not_run = {name for name in report if name.split(":")[0] in ON_DEMAND and name not in recorded}
    stale = stale_stages({k: v for k, v in report.items() if k not in not_run}, produced, committed)
    assert not stale, (
        f"dvc.lock is stale: {len(stale)} stage(s) were not produced by the committed code and params, e.g. "
        + "; ".join(f"{name}: {', '.join(what[:4])}" for name, what in list(stale.items())[:5])
        + ". Re-run them (`dvc repro`) and commit dvc.lock with the metrics"
    )


# one beside each dvc.yaml
LOCKS = (
    "dvc.lock",
    "study/dvc.lock",
    "fingerprints/dvc.lock",
    "layer/dvc.lock",
    "claims/dvc.lock",
    "scale/dvc.lock",
    "paper/dvc.lock",
)
WATCHED = ("src", "params.yaml", "dvc.yaml", "study", "fingerprints", "layer", "claims", "scale", "paper", *LOCKS)
# pipelines run only when named: a stage of theirs that no lock records has not been run at this commit (it
# commits no result, and README says so); every stage the default `dvc repro` runs must be recorded and current
ON_DEMAND = {"layer/dvc.yaml", "claims/dvc.yaml", "scale/dvc.yaml", "paper/dvc.yaml"}


def recorded_stages(lock: Path) -> set[str]:
    """The stages a lock file records, named as `dvc status` names them (<dir>/dvc.yaml:<stage> beside a
    sub-pipeline, the bare name in the root)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    prefix = "" if lock.parent == ROOT else f"{lock.parent.relative_to(ROOT).as_posix()}/dvc.yaml:"
    return {prefix + name for name in stages}


def recorded_outputs(lock: Path) -> set[str]:
    """Every output path a lock file records, as written there and relative to the repo root (a
    stage with `wdir: ..` records paths relative to its working directory, the root)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    paths = {out["path"] for stage in stages.values() for out in stage.get("outs", [])}
    beside = lock.parent.relative_to(ROOT) if lock.parent != ROOT and lock.is_relative_to(ROOT) else Path()
    return paths | {os.path.normpath(beside / path) for path in paths}


def stale_stages(status: dict, produced: set[str], committed: set[str]) -> dict[str, list[str]]:
    """{stage: what differs} from `dvc status --json`: a changed command, a changed param, a changed
    (or unrecorded) dependency that is not another stage's uncommitted output. Another stage's output that
    git does not hold (data, checkpoints) is absent from a fresh clone, so its change says nothing; one that
    git holds (the code fingerprints, cache: false metrics) is the committed file, so a change means the
    stage was not re-run on it. committed: the paths git tracks."""

    def uncommitted_output(path: str) -> bool:
        in_git = path in committed or any(file.startswith(path + "/") for file in committed)
        return not in_git and any(
            path == out or path.startswith(out + "/") or out.startswith(path + "/") for out in produced
        )

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
                elif not uncommitted_output(path):
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
        "bench": [{"changed deps": {"fingerprints/code/bench.json": "modified"}}],
    }
    produced = {"data/prepared/lm", "metrics/machine.json", "models/a", "fingerprints/code"}
    committed = {"fingerprints/code/bench.json", "src/moelab/report/plots.py"}
    assert stale_stages(status, produced, committed) == {
        "train@a": ["src/moelab/moe modified"],
        "train@b": ["param lm.train modified"],
        "prepare@lm": ["its command"],
        "report": ["src/moelab/report new"],
        "bench": ["fingerprints/code/bench.json modified"],
    }
