"""Robustness: exact resume after SIGKILL, atomic writes, clear one-line errors for bad input, NaN guard.

Tiny params (a copy of the repo's params.yaml, shrunk) and the repo's prepared data (data/prepared/lm).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA: Path = Path()  # set by _prepared_data
PREPARED = None  # conftest `prepared`: PREPARED(task) -> that task's prepared data (set by _prepared_data)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
VOLATILE = {"wall_s", "train_tokens_per_s", "resumed_from_step"}


@pytest.fixture(scope="module", autouse=True)
def _prepared_data(prepared) -> Path:
    """The bundled LM corpus, prepared once per session (conftest `prepared`)."""
    global DATA, PREPARED
    DATA, PREPARED = prepared("lm"), prepared
    return DATA


def tiny_params(path: Path, steps: int = 40, **overrides) -> Path:
    """The repo's params.yaml, shrunk; the study narrowed to one top-2 gate so a selection bias is valid."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p.update(tasks=["lm"], routers=["linear"], gates=["softmax-top2"], models=["e8"], model="e8", top_k=2)
    p["moe"]["bias_update_rate"] = 0.01
    for task in ("lm", "summarization", "classification"):
        p[task]["pretrain"] = None  # every run from its own initialisation: no base to train first
    p["lm"]["train"].update(
        steps=steps, batch_size=4, checkpoint_every=5, eval_every=10, eval_batches=2, warmup_steps=4
    )
    p["lm"]["evaluate"].update(batch_size=16, max_batches=2, samples=1, sample_tokens=4)
    p["classification"]["train"].update(steps=steps, batch_size=8, checkpoint_every=5, eval_every=10, eval_batches=1)
    p["classification"]["evaluate"].update(batch_size=16, max_batches=1, samples=1)
    for key, value in overrides.items():  # "lm.train.lr": 1.0
        *parents, last = key.split(".")
        node = p
        for k in parents:
            node = node[k]
        node[last] = value
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def cli(stage: str, params: Path, work: Path, *extra: str, data: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "moelab",
        stage,
        "--params",
        str(params),
        "--data-dir",
        str(data or DATA),
        "--models-dir",
        str(work / "models"),
        "--metrics-dir",
        str(work / "metrics"),
        *extra,
    ]


def run_cli(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=120, **kw)


def digest(*dirs: Path) -> dict[str, str]:
    out = {}
    for d in dirs:
        for f in sorted(Path(d).rglob("*")) if Path(d).exists() else []:
            if f.is_file() and f.name != ".lock":  # the lock file names its current holder
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def metrics_of(work: Path) -> dict:
    m = json.loads((work / "metrics" / "train" / "run.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def live_logs(work: Path) -> dict[str, str]:
    base = work / "metrics" / "train" / "live" / "run" / "plots" / "metrics"
    return {str(f.relative_to(base)): f.read_text() for f in sorted(base.rglob("*.tsv"))}


# ---------------------------------------------------------------- exact resume after SIGKILL / Ctrl-C
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """A 40-step run trained in one go: what an interrupted and resumed run must reproduce exactly."""
    work = tmp_path_factory.mktemp("uninterrupted")
    r = run_cli(cli("train", tiny_params(work / "params.yaml"), work, "--quiet"))
    assert r.returncode == 0, r.stderr
    return work


def start_and_signal(params: Path, work: Path, sig: int, settle: float) -> subprocess.Popen:
    """Start `moelab train`, wait for its first checkpoint, wait `settle` s more, send `sig`."""
    latest = work / "models" / "run" / "latest.pt"
    proc = subprocess.Popen(
        cli("train", params, work, "--quiet"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 90
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(settle)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def assert_resumes_exactly(work: Path, params: Path, reference: Path, resumed_at: int) -> None:
    """Re-running the same command (here in this process) finishes bit-identical to the uninterrupted run."""
    from moelab.cli import main

    assert main(cli("train", params, work, "--quiet")[3:]) == 0
    resumed = json.loads((work / "metrics" / "train" / "run.json").read_text())
    assert resumed["resumed_from_step"] == resumed_at
    assert metrics_of(work) == metrics_of(reference)  # bit-exact on CPU
    for name in ("latest.pt", "best.pt"):
        a, b = weights(reference / "models" / "run" / name), weights(work / "models" / "run" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    biases = [k for k in a if k.endswith("selection_bias.bias")]
    assert biases and any(a[k].abs().sum() > 0 for k in biases), "selection bias not active / not checkpointed"
    state = torch.load(work / "models" / "run" / "latest.pt", weights_only=True)
    assert [r["step"] for r in state["history"]] == list(range(1, 41))
    assert live_logs(work) == live_logs(reference)  # DVCLive: no step logged twice or lost
    assert not list((work / "models" / "run").glob(".*.tmp"))


def test_sigkill_resume_is_exact(tmp_path, uninterrupted):
    params = tiny_params(tmp_path / "params.yaml")
    proc = start_and_signal(params, tmp_path, signal.SIGKILL, settle=0.05)  # somewhere between checkpoints
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "metrics" / "train" / "run.json").exists()
    killed_at = torch.load(tmp_path / "models" / "run" / "latest.pt", weights_only=True)["step"]
    assert 0 < killed_at < 40
    assert_resumes_exactly(tmp_path, params, uninterrupted, killed_at)


def test_ctrl_c_saves_a_checkpoint_and_resumes_exactly(tmp_path, uninterrupted):
    """Ctrl-C (SIGINT) during training: a checkpoint at the last finished step, one line naming that
    step, exit 130; the same command then finishes exactly as if never interrupted."""
    params = tiny_params(tmp_path / "params.yaml")
    proc = start_and_signal(params, tmp_path, signal.SIGINT, settle=0.02)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moelab train: "), stderr
    saved = torch.load(tmp_path / "models" / "run" / "latest.pt", weights_only=True)["step"]
    assert 5 <= saved < 40  # the step it had finished, whether or not checkpoint_every divides it
    assert f"interrupted at step {saved} of 40" in lines[0] and "re-run the same command" in lines[0]
    assert not (tmp_path / "metrics" / "train" / "run.json").exists()
    assert_resumes_exactly(tmp_path, params, uninterrupted, saved)


def test_resume_of_finished_run_changes_nothing(tmp_path):
    from moelab.cli import main

    argv = cli("train", tiny_params(tmp_path / "params.yaml", steps=10), tmp_path, "--quiet")[3:]
    assert main(argv) == 0
    before = metrics_of(tmp_path)
    ckpt = digest(tmp_path / "models")
    assert main(argv) == 0
    assert metrics_of(tmp_path) == before and digest(tmp_path / "models") == ckpt


def test_resume_with_another_world_size_is_refused(tmp_path, capfd):
    """The global batch is batch_size x world size: resuming a 2-rank checkpoint on 1 process would
    silently change it mid-run, so it is refused with one line and the checkpoint is kept."""
    from moelab.cli import main

    argv = cli("train", tiny_params(tmp_path / "params.yaml", steps=10), tmp_path, "--quiet")[3:]
    assert main([*argv, "--stop-after", "5"]) == 0
    latest = tmp_path / "models" / "run" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    assert state["world_size"] == 1
    state["world_size"] = 2  # as if written by `torchrun --nproc_per_node 2`
    torch.save(state, latest)
    before = digest(tmp_path / "models")
    capfd.readouterr()
    assert main(argv) == 2
    stderr = capfd.readouterr().err
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "world size 2" in stderr and "--nproc_per_node 2" in stderr
    assert digest(tmp_path / "models") == before


# ---------------------------------------------------------------- atomic writes
def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    from moelab import io as mio
    from moelab.checkpoint import save_checkpoint

    ckpt, metrics = tmp_path / "latest.pt", tmp_path / "train.json"
    save_checkpoint(ckpt, {"step": 1, "w": torch.ones(3)})
    mio.write_metrics(metrics, {"steps": 1})
    old = digest(tmp_path)

    def boom(src, dst):
        raise OSError(28, "No space left on device (simulated crash)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, {"step": 2, "w": torch.zeros(3)})
    with pytest.raises(OSError):
        mio.write_metrics(metrics, {"steps": 2})
    assert digest(tmp_path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "train.json", "train.meta.json"]


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    from moelab.io import remove_stale_temps

    (tmp_path / ".latest.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "latest.pt").write_bytes(b"whole")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".latest.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def tiny_data_params(path: Path, **overrides) -> Path:
    """tiny_params whose lm corpus is cut to 40 documents and a 300-token vocabulary: prepares in seconds."""
    return tiny_params(
        path, steps=5, **{"lm.data.max_records": 40, "lm.data.vocab_size": 300, "lm.data.seq_len": 32, **overrides}
    )


def modes(*paths: Path) -> dict[str, str]:
    return {p.name: oct(p.stat().st_mode & 0o777) for p in paths}


def test_written_files_respect_the_umask(tmp_path):
    """Under umask 022 every file moelab writes (prepared data, checkpoints, metrics) is 0644 and every
    directory 0755, as with any other tool: atomic writes must not leave mkstemp's 0600."""
    from moelab.cli import main

    params = tiny_data_params(tmp_path / "params.yaml")
    data = tmp_path / "prepared" / "lm"
    old = os.umask(0o022)
    try:
        assert main(["prepare", "--task", "lm", "--params", str(params), "--out", str(data)]) == 0
        assert main(cli("train", params, tmp_path, "--quiet", data=data)[3:]) == 0
        assert main(cli("evaluate", params, tmp_path, "--quiet", data=data)[3:]) == 0
    finally:
        os.umask(old)
    files = [f for d in (data, tmp_path / "models", tmp_path / "metrics") for f in d.rglob("*") if f.is_file()]
    dirs = [data, tmp_path / "models", tmp_path / "metrics", *(f.parent for f in files)]
    names = {f.name for f in files}
    assert {
        "tokenizer.json",
        "manifest.json",
        "train.npy",
        "latest.pt",
        "best.pt",
        "run.json",
        "run.meta.json",
    } <= names
    assert modes(*files) == dict.fromkeys(modes(*files), "0o644")
    assert modes(*dirs) == dict.fromkeys(modes(*dirs), "0o755")


def test_atomic_writes_follow_a_strict_umask_too(tmp_path):
    from moelab.io import atomic_write_text, default_mode

    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert default_mode(directory=True) == 0o700
    finally:
        os.umask(old)
    assert modes(tmp_path / "a.json") == {"a.json": "0o600"}


# ---------------------------------------------------------------- YAML 1.2 numbers
def test_exponent_without_a_dot_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads `1e4` as the string '1e4'; params.yaml is read with YAML 1.2's rule,
    as DVC reads it, so `lr: 1e4` is the number 10000.0 (and names such as e8 stay names)."""
    from moelab.cli import main
    from moelab.config.load import read_yaml
    from moelab.resolve import load_params

    f = tmp_path / "values.yaml"
    f.write_text("a: 1e4\nb: 1E-3\nc: -2e-5\nd: +1e2\ne: 12\nf: e8\ng: 1.5\nh: .inf\ni: 1_000\n")
    values = read_yaml(f)
    assert values == {
        "a": 1e4,
        "b": 1e-3,
        "c": -2e-5,
        "d": 100.0,
        "e": 12,
        "f": "e8",
        "g": 1.5,
        "h": float("inf"),
        "i": 1000,
    }
    assert [type(values[k]) for k in "aeg"] == [float, int, float]
    params = tiny_params(tmp_path / "params.yaml", **{"lm.train.lr": 0.003})
    text = params.read_text()
    assert "    lr: 0.003\n" in text
    params.write_text(text.replace("    lr: 0.003\n", "    lr: 1e4\n", 1))
    assert load_params(params).lm.train.lr == 10000.0
    assert main(["check", "--params", str(params)]) == 0


# ---------------------------------------------------------------- an interrupted prepare
KILL_AFTER_TOKENIZER = """
import os, signal, sys
from moelab.data import tokenizer
real = tokenizer.train_bpe
def train_then_die(*args, **kwargs):
    tok = real(*args, **kwargs)  # tokenizer.json written; the token ids not yet
    os.kill(os.getpid(), signal.SIGKILL)
tokenizer.train_bpe = train_then_die
from moelab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_prepare_killed_after_its_tokenizer_leaves_the_old_data_whole(tmp_path, monkeypatch):
    """A prepare killed between writing the new tokenizer and the new token ids (SIGKILL: no cleanup
    runs) leaves the old prepared directory byte-identical and consistent; the next prepare removes
    the killed one's temp dir. An exception (Ctrl-C) at that point leaves not even a temp dir."""
    from moelab.cli import main
    from moelab.data import tokenizer
    from moelab.data.tokenizer import load_checked_tokenizer

    out = tmp_path / "prepared" / "lm"
    argv = ["prepare", "--task", "lm", "--out", str(out), "--params"]
    assert main([*argv, str(tiny_data_params(tmp_path / "old.yaml"))]) == 0
    old = digest(out)
    new_params = str(tiny_data_params(tmp_path / "new.yaml", **{"lm.data.vocab_size": 400}))

    r = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_TOKENIZER, *argv, new_params],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert digest(out) == old
    (stale,) = out.parent.glob(".lm.prepare-tmp-*")
    assert (stale / "tokenizer.json").is_file() and not (stale / "train.npy").exists()  # killed where intended
    load_checked_tokenizer(out, "")  # the old ids and the old tokenizer still belong together

    real = tokenizer.train_bpe

    def train_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "train_bpe", train_then_interrupt)
    assert main([*argv, new_params]) == 130
    assert digest(out) == old
    assert sorted(p.name for p in out.parent.iterdir()) == [".lm.lockdir", "lm"]  # the stale temp dir is gone too

    out.rename(out.parent / ".lm.prepare-old")  # as if killed between moving the old data aside and the new in
    assert main([*argv, new_params]) == 130
    assert digest(out) == old, "the old data is put back before anything else"

    monkeypatch.setattr(tokenizer, "train_bpe", real)
    assert main([*argv, new_params]) == 0
    assert json.loads((out / "manifest.json").read_text())["stats"]["vocab_size"] == 400
    load_checked_tokenizer(out, "")
    assert sorted(p.name for p in out.parent.iterdir()) == [".lm.lockdir", "lm"]


# ---------------------------------------------------------------- NaN / inf guard
@pytest.mark.parametrize(
    "term,knob,lowered", [("task loss", "lm.train.lr", 0.0001), ("balancing loss", "moe.aux_loss_coef", 0.001)]
)
def test_non_finite_loss_stops_and_its_advice_works(tmp_path, monkeypatch, capfd, term, knob, lowered):
    """A non-finite loss at step 8 stops training with one line naming the step, the term, the last
    good checkpoint (step 5, left intact) and the key to lower; doing exactly that and re-running
    the same command starts a fresh run, with one line saying so."""
    from moelab.cli import main
    from moelab.train import loop as tr

    params = tiny_params(tmp_path / "params.yaml", steps=20)
    argv = cli("train", params, tmp_path, "--quiet")[3:]
    latest = tmp_path / "models" / "run" / "latest.pt"
    seen = {"steps": 0, "latest": None, "armed": True}
    real_loss = tr.task_loss

    def poisoned(model, batch):
        loss, info = real_loss(model, batch)
        core = getattr(model, "module", model)
        if core.training and seen["armed"]:
            seen["steps"] += 1
            if seen["steps"] == 8:
                seen["latest"] = latest.read_bytes()  # the last good checkpoint (step 5)
                if term == "task loss":
                    loss = loss * float("nan")
                else:
                    core.moe_layers()[0].balancing_loss = torch.tensor(float("inf"))
        return loss, info

    monkeypatch.setattr(tr, "task_loss", poisoned)
    capfd.readouterr()
    assert main(argv) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moelab train: error: step 8: "), lines
    msg = lines[0]
    assert term in msg and "non-finite" in msg and f"{latest} (step 5) left intact" in msg, msg
    assert f"lower {knob}" in msg and "params.yaml" in msg and "starts a fresh run" in msg, msg
    assert "resume from step 5 (--restart: from step 0)" in msg, msg
    assert latest.read_bytes() == seen["latest"]
    assert not (tmp_path / "metrics" / "train" / "run.json").exists()

    seen["armed"] = False  # the advice: lower that value in params.yaml, re-run the same command
    tiny_params(params, steps=20, **{knob: lowered})
    assert main(argv) == 0
    started = [line for line in capfd.readouterr().out.splitlines() if "started fresh" in line]
    assert len(started) == 1 and knob.split(".")[-1] in started[0], started
    assert json.loads((tmp_path / "metrics" / "train" / "run.json").read_text())["resumed_from_step"] == 0
    aside = tmp_path / ".models.run.previous" / "latest.pt"
    assert aside.read_bytes() == seen["latest"], "the old run's checkpoint is moved aside, not deleted"


def test_restart_moves_the_run_aside_and_trains_from_step_zero(tmp_path, monkeypatch, capfd):
    """--restart on a finished run: one line, the run moved aside (a second one replaces it, and says
    so), training from step 0; the old run's train metrics never sit beside the new run's checkpoints."""
    from moelab.cli import main
    from moelab.train import loop as tr

    argv = cli("train", tiny_params(tmp_path / "params.yaml", steps=10), tmp_path, "--quiet")[3:]
    assert main(argv) == 0
    finished = (tmp_path / "models" / "run" / "latest.pt").read_bytes()
    capfd.readouterr()
    assert main([*argv, "--restart", "--stop-after", "3"]) == 0
    (line,) = [x for x in capfd.readouterr().out.splitlines() if "started fresh" in x]
    assert line == f"moelab train: --restart: moved that run to {tmp_path / '.models.run.previous'} and started fresh"
    assert (tmp_path / ".models.run.previous" / "latest.pt").read_bytes() == finished
    assert json.loads((tmp_path / "metrics" / "train" / "run.json").read_text())["resumed_from_step"] == 0
    assert torch.load(tmp_path / "models" / "run" / "latest.pt", weights_only=True)["step"] == 3

    def crash(model, batch):
        raise RuntimeError("simulated crash in the first step")

    monkeypatch.setattr(tr, "task_loss", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*argv, "--restart"])
    assert "(replacing the one moved there before)" in capfd.readouterr().out
    assert not (tmp_path / "metrics" / "train" / "run.json").exists(), (
        "metrics of the moved-aside run left beside the new"
    )
    assert not (tmp_path / "metrics" / "train" / "run.meta.json").exists()


def test_non_finite_loss_cli_one_line(tmp_path):
    """A real way: a learning rate that makes the loss explode."""
    params = tiny_params(
        tmp_path / "params.yaml",
        steps=30,
        **{"lm.train.lr": 1e6, "lm.train.grad_clip": 1e9, "lm.train.warmup_steps": 0},
    )
    r = run_cli(cli("train", params, tmp_path, "--quiet"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moelab train: error: step "), r.stderr
    assert "non-finite" in lines[0] and ("loss" in lines[0] or "gradient norm" in lines[0])


# ---------------------------------------------------------------- bad input: one clear line, exit 2, nothing lost
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny e8 run (checkpoints + metrics) that every bad-input case must leave byte-identical."""
    work = tmp_path_factory.mktemp("trained")
    params = tiny_params(work / "params.yaml", steps=5, **{"lm.train.checkpoint_every": 5})
    from moelab.cli import main

    assert main(cli("train", params, work, "--quiet")[3:]) == 0
    assert main(cli("evaluate", params, work, "--quiet")[3:]) == 0
    return work


class Evil:
    """Unpickling this would run a command: a checkpoint must never be able to do that."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MOELAB_PWNED', '/tmp/moelab-pwned')}",))


def _edit(key, value):
    def f(p):
        *parents, last = key.split(".")
        for k in parents:
            p = p[k]
        if value is _DEL:
            del p[last]
        else:
            p[last] = value

    return f


_DEL = object()


def _params_case(edit, stage="train"):
    """An edited params.yaml: refused by validation (`moelab check` says the same), before any work."""

    def setup(work, params):
        p = yaml.safe_load(params.read_text())
        edit(p)
        params.write_text(yaml.safe_dump(p))
        return [stage], {"validation": True}

    return setup


def _raw_params(text):
    def setup(work, params):
        params.write_text(text)
        return ["train"], {}

    return setup


def _args(*argv, stage="train"):
    def setup(work, params):
        return [stage, *argv], {}

    return setup


def _data(mutate, stage="train", task="lm"):
    """A copy of `task`'s prepared data, broken by `mutate`; the stage runs on it."""

    def setup(work, params):
        data = work / "bad-data"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(PREPARED(task), data)
        mutate(data)
        return [stage, "--task", task], {"data": data}

    return setup


def _ckpt(mutate, stage):
    def setup(work, params):
        mutate(work / "models" / "run")  # the experiment's run
        return [stage], {}

    return setup


def _truncate(models):
    f = models / "latest.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _truncate_best(models):
    f = models / "best.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _random_bytes(models):
    (models / "latest.pt").write_bytes(np.random.default_rng(0).bytes(4096))


def _best_over_latest(models):
    shutil.copy(models / "best.pt", models / "latest.pt")


def _evil_pickle(name):
    def mutate(models):
        with open(models / name, "wb") as fh:
            pickle.dump({"model": Evil(), "step": 1}, fh)

    return mutate


def _evil_torch_save(models):
    torch.save({"model": Evil(), "step": 1}, models / "best.pt")


def _prepare(source_of, corpora=None):
    """`moelab prepare --task lm` over a copy of the prepared data (which must stay byte-identical),
    lm.data.source = source_of(work); corpora(work/"corpora") builds MOELAB_CORPORA (bundled snapshots)."""

    def setup(work, params):
        p = yaml.safe_load(params.read_text())
        p["lm"]["data"]["source"] = source_of(work)
        params.write_text(yaml.safe_dump(p))
        out = work / "prepared" / "lm"
        shutil.copytree(DATA, out)
        opts = {"prepare": True, "watch": [out]}
        if corpora is not None:
            (work / "corpora").mkdir()
            corpora(work / "corpora")
            opts["env"] = {"MOELAB_CORPORA": str(work / "corpora")}
        return ["prepare", "--out", str(out)], opts

    return setup


def _write_jsonl(name, text):
    def source(work):
        (work / name).write_text(text)
        return str(work / name)

    return source


def _write_bytes(name, data: bytes):
    def source(work):
        (work / name).write_bytes(data)
        return str(work / name)

    return source


def _bundled(file, data_of):
    """A bundled snapshot `file` in MOELAB_CORPORA, its bytes made by data_of(the real snapshot's bytes)."""

    def corpora(directory):
        (directory / file).write_bytes(data_of((ROOT / "data" / "corpora" / file).read_bytes()))

    return corpora


def _xz(text: bytes) -> bytes:
    import lzma

    return lzma.compress(text)


def _bad_jsonl_line(real: bytes) -> bytes:
    import lzma

    lines = lzma.decompress(real).splitlines()[:200]
    lines.insert(100, b'{"text": "a review cut off in the mid')
    return _xz(b"\n".join(lines) + b"\n")


def _missing_params(work, params):
    params.unlink()
    return ["train"], {}


def _report_of_truncated_eval(work, params):
    """A study whose eval/s0.json was cut off mid-write (e.g. a full disk): `moelab report` reads it.
    The study is the trained run's evaluation, filed as every run params.yaml names (study.py's layout)."""
    import yaml

    from moelab.io import write_json, write_metrics
    from moelab.resolve import load_params
    from moelab.study import run_paths, runs, variants

    raw = yaml.safe_load(params.read_text())
    raw["seeds"] = [0]
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    study, evaluation = work / "study", json.loads((work / "metrics" / "eval" / "run.json").read_text())
    loaded = load_params(params)
    for variant in variants(loaded, "lm"):
        run = runs(loaded, variant)[0]
        paths = run_paths(variant, 0)
        target = study.parent / paths.eval  # under work/metrics/study/...
        write_metrics(target, evaluation, run.to_dict())
        write_json(target.with_name("s0.routing.json"), {"layers": [], "specialisation": None})
    write_json(study.parent / "metrics" / "study" / "lm" / "references.json", {})
    cut = study.parent / run_paths(variants(loaded, "lm")[0], 0).eval
    cut.write_text(cut.read_text()[:40])
    argv = ["report", "--params", str(params), "--study", str(work / "metrics" / "study")]
    argv += ["--bench", str(work / "bench"), "--out", str(work / "out"), "--plots", str(work / "plots")]
    return argv, {"argv": True}


def _empty_npy(d):
    np.save(d / "train.npy", np.zeros(0, dtype=np.int32))


def _object_npy(d):
    np.save(d / "train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _npy_token(value):
    def mutate(d):
        ids = np.load(d / "train.npy")
        ids[len(ids) // 2] = value
        np.save(d / "train.npy", ids)

    return mutate


def _npz_edit(split, key, index, value):
    """Set one entry of array `key` of {split}.npz (a label id, a token id)."""

    def mutate(d):
        with np.load(d / f"{split}.npz") as z:
            arrays = {k: z[k].copy() for k in z.files}
        arrays[key][index] = value
        np.savez(d / f"{split}.npz", **arrays)

    return mutate


def _truncate_file(name):
    def mutate(d):
        f = d / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    return mutate


def _other_tokenizer(task):
    """A valid tokenizer.json of another prepare run (another task's): the ids do not belong to it."""

    def mutate(d):
        shutil.copy(PREPARED(task) / "tokenizer.json", d / "tokenizer.json")

    return mutate


def _one_more_merge(d):
    """tokenizer.json edited by hand (still a valid tokenizer): not the one the ids were made with."""
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    (d / "tokenizer.json").write_text(json.dumps(tok))


BIG = 12345678901234567890  # 20 digits: more than any seed generator takes

# (id, setup, words the message must contain)
BAD = [
    ("unknown-top-level-key", _params_case(_edit("routr", "linear")), ["unknown key 'routr'", "router"]),
    ("unknown-nested-key", _params_case(_edit("moe.aux_loss_coeff", 0.1)), ["moe.aux_loss_coeff", "aux_loss_coef"]),
    ("unknown-deep-key", _params_case(_edit("lm.train.learning_rate", 0.1)), ["lm.train.learning_rate"]),
    ("misspelled-router", _params_case(_edit("router", "atention")), ["router", "'atention'", "attention"]),
    ("misspelled-norm", _params_case(_edit("norm", "softmx")), ["norm", "softmax"]),
    ("top_k-string", _params_case(_edit("top_k", "two")), ["top_k", "'two'", "int"]),
    ("lr-string", _params_case(_edit("lm.train.lr", "fast")), ["lm.train.lr", "'fast'", "float"]),
    ("top_k-gt-experts", _params_case(_edit("top_k", 9)), ["top_k", "9", "1..8"]),
    ("top_k-negative", _params_case(_edit("top_k", -1)), ["top_k", "-1"]),
    ("capacity-negative", _params_case(_edit("moe.capacity_factor", -0.5)), ["capacity_factor", "-0.5"]),
    ("bias-with-soft-routing", _params_case(_edit("top_k", 0)), ["bias_update_rate", "top_k = 0"]),
    ("steps-zero", _params_case(_edit("lm.train.steps", 0)), ["lm.train.steps", "0"]),
    # wrong numbers that used to train (or evaluate) to the end with exit code 0
    ("max-batches-zero", _params_case(_edit("lm.evaluate.max_batches", 0), "evaluate"), ["max_batches", "0", ">= 1"]),
    ("eval-batches-zero", _params_case(_edit("lm.train.eval_batches", 0)), ["lm.train.eval_batches", "0", ">= 1"]),
    ("grad-clip-negative", _params_case(_edit("lm.train.grad_clip", -1)), ["lm.train.grad_clip", "-1", "> 0"]),
    ("capacity-inf", _params_case(_edit("moe.capacity_factor", float("inf"))), ["capacity_factor", "inf", "finite"]),
    ("capacity-nan", _params_case(_edit("moe.capacity_factor", float("nan"))), ["capacity_factor", "nan", "finite"]),
    ("n-layers-zero", _params_case(_edit("lm.models.e8.n_layers", 0)), ["lm.models.e8.n_layers", "0", ">= 1"]),
    ("d-ff-zero", _params_case(_edit("lm.models.e8.d_ff", 0)), ["lm.models.e8.d_ff", "0", ">= 1"]),
    ("dense-top-k-zero", _params_case(_edit("dense.top_k", 0), "evaluate"), ["dense.top_k", "0", ">= 1"]),
    # values that used to end in a traceback
    ("eval-every-zero", _params_case(_edit("lm.train.eval_every", 0)), ["lm.train.eval_every", "0", ">= 1"]),
    ("checkpoint-every-zero", _params_case(_edit("lm.train.checkpoint_every", 0)), ["checkpoint_every", ">= 1"]),
    ("n-heads-not-dividing", _params_case(_edit("lm.models.e8.n_heads", 3)), ["lm.models.e8.n_heads", "3", "64"]),
    ("dropout-one", _params_case(_edit("lm.models.e8.dropout", 1.0)), ["lm.models.e8.dropout", "1.0", "< 1"]),
    ("dropout-negative", _params_case(_edit("lm.models.e8.dropout", -0.1)), ["dropout", "-0.1", ">= 0"]),
    ("d-model-zero", _params_case(_edit("lm.models.e8.d_model", 0)), ["lm.models.e8.d_model", "0", ">= 1"]),
    ("lr-nan", _params_case(_edit("lm.train.lr", float("nan"))), ["lm.train.lr", "nan", "finite"]),
    ("lr-inf", _params_case(_edit("lm.train.lr", float("inf"))), ["lm.train.lr", "inf", "finite"]),
    ("dense-width-negative", _params_case(_edit("dense.top_k", -2), "evaluate"), ["dense.top_k", "-2"]),
    ("d-ff-negative", _params_case(_edit("lm.models.e8.d_ff", -8)), ["lm.models.e8.d_ff", "-8"]),
    ("seed-20-digits", _params_case(_edit("seed", BIG)), ["seed", str(BIG), "4294967295"]),
    ("seeds-20-digits", _params_case(_edit("seeds", [0, BIG])), ["seeds[1]", str(BIG), "4294967295"]),
    ("seed-flag-20-digits", _args("--seed", str(BIG)), ["seed", str(BIG), "4294967295"]),
    ("seed-flag-negative", _args("--seed", "-3", stage="evaluate"), ["seed", "-3", ">= 0"]),
    ("top-p-zero", _params_case(_edit("lm.evaluate.top_p", 0), "evaluate"), ["lm.evaluate.top_p", "0", "> 0"]),
    ("temperature-nan", _params_case(_edit("lm.evaluate.temperature", float("nan")), "evaluate"), ["temperature"]),
    ("missing-key", _params_case(_edit("lm.train.lr", _DEL)), ["missing key", "lm.train.lr"]),
    ("empty-tasks", _params_case(_edit("tasks", [])), ["tasks", "non-empty list"]),
    ("invalid-yaml", _raw_params("router: [linear\nmoe: {"), ["not valid YAML"]),
    ("missing-params", _missing_params, ["not found", "params.yaml"]),
    ("unknown-model-flag", _args("--model", "e99"), ["e99", "e8"]),
    ("unknown-gate-flag", _args("--gate", "sparsmax"), ["sparsmax", "gate_presets"]),
    ("bad-seed-flag", _args("--seed", "abc"), ["--seed", "'abc'"]),
    ("unknown-flag", _args("--stepz", "3"), ["--stepz"]),
    # prepared data: missing, corrupt, or not from one prepare run
    ("missing-data-dir", lambda w, p: (["train"], {"data": w / "nowhere"}), ["nowhere", "moelab prepare"]),
    ("missing-train-npy", _data(lambda d: (d / "train.npy").unlink()), ["train.npy", "moelab prepare"]),
    ("missing-test-npy-evaluate", _data(lambda d: (d / "test.npy").unlink(), "evaluate"), ["test.npy", "prepare"]),
    ("empty-train-npy", _data(_empty_npy), ["train.npy", "0 tokens", "prepare"]),
    ("object-npy", _data(_object_npy), ["train.npy", "prepare"]),
    ("truncated-npy", _data(_truncate_file("validation.npy")), ["validation.npy", "not a readable", "prepare"]),
    ("token-id-out-of-range", _data(_npy_token(99999)), ["train.npy", "outside", "vocabulary", "prepare"]),
    ("token-id-negative", _data(_npy_token(-1), "evaluate"), ["train.npy", "outside", "vocabulary", "prepare"]),
    ("missing-tokenizer", _data(lambda d: (d / "tokenizer.json").unlink()), ["tokenizer.json", "prepare"]),
    ("garbage-tokenizer", _data(lambda d: (d / "tokenizer.json").write_text("{not json")), ["tokenizer.json"]),
    ("tokenizer-of-another-run", _data(_other_tokenizer("classification")), ["tokenizer.json", "made with", "prepare"]),
    ("tokenizer-edited", _data(_one_more_merge, "evaluate"), ["tokenizer.json", "made with", "prepare"]),
    ("missing-manifest", _data(lambda d: (d / "manifest.json").unlink()), ["manifest.json", "prepare"]),
    ("garbage-manifest", _data(lambda d: (d / "manifest.json").write_text("[1")), ["manifest.json", "prepare"]),
    ("cls-truncated-npz", _data(_truncate_file("train.npz"), task="classification"), ["train.npz", "prepare"]),
    (
        "cls-garbage-labels",
        _data(lambda d: (d / "labels.json").write_text("{not json"), task="classification"),
        ["labels.json", "not valid JSON", "prepare"],
    ),
    (
        "cls-labels-not-a-list",
        _data(lambda d: (d / "labels.json").write_text('{"fresh": 0}'), task="classification"),
        ["labels.json", "list", "prepare"],
    ),
    (
        "cls-garbage-tokenizer",
        _data(lambda d: (d / "tokenizer.json").write_text("\x00\x01"), "evaluate", "classification"),
        ["tokenizer.json", "prepare"],
    ),
    (
        "cls-label-out-of-range",
        _data(_npz_edit("validation", "labels", 3, 7), task="classification"),
        ["validation.npz", "labels outside 0..1", "prepare"],
    ),
    (
        "cls-token-id-out-of-range",
        _data(_npz_edit("test", "text_ids", 5, 50000), "evaluate", "classification"),
        ["test.npz", "outside", "vocabulary", "prepare"],
    ),
    (
        "cls-garbage-test-texts",
        _data(lambda d: (d / "test.json").write_text('{"texts": [1'), "evaluate", "classification"),
        ["test.json", "prepare"],
    ),
    (
        "cls-test-texts-missing",
        _data(lambda d: (d / "test.json").unlink(), "evaluate", "classification"),
        ["test.json", "prepare"],
    ),
    # prepare: the corpus itself (local files and bundled snapshots) is broken
    ("prepare-column-missing", _prepare(_write_jsonl("c.jsonl", '{"body": "a line"}\n' * 50)), ["text", "body"]),
    ("prepare-empty-file", _prepare(_write_jsonl("empty.jsonl", "")), ["empty"]),
    ("prepare-hub-offline", _prepare(lambda w: "roneneldan/TinyStories"), ["roneneldan/TinyStories", "download"]),
    (
        "prepare-bad-jsonl-line",
        _prepare(_write_jsonl("c.jsonl", '{"text": "one"}\n{"text": "tw\n' + '{"text": "three"}\n' * 50)),
        ["c.jsonl", "line 2", "not valid JSON", "fix or remove"],
    ),
    (
        "prepare-jsonl-invalid-utf8",
        _prepare(_write_bytes("c.jsonl", b'{"text": "one"}\n' * 2 + b'{"text": "t\xffo"}\n' * 50)),
        ["c.jsonl", "line 3", "UTF-8"],
    ),
    (
        "prepare-truncated-gz",
        _prepare(_write_bytes("c.jsonl.gz", gzip.compress(b'{"text": "one two"}\n' * 500)[:60])),
        ["c.jsonl.gz", "truncated", "gz"],
    ),
    (
        "prepare-invalid-utf8",
        _prepare(_write_bytes("c.txt", b"first paragraph\n\nsecond \xff\xfe paragraph\n" * 30)),
        ["c.txt", "check the file"],
    ),
    (
        "corpus-truncated-xz",
        _prepare(lambda w: "shakespeare", _bundled("shakespeare.txt.xz", lambda b: b[: len(b) // 2])),
        ["shakespeare.txt.xz", "truncated", "git checkout"],
    ),
    (
        "corpus-not-xz",
        _prepare(lambda w: "shakespeare", _bundled("shakespeare.txt.xz", lambda b: b"just text\n" * 100)),
        ["shakespeare.txt.xz", "not xz", "git checkout"],
    ),
    (
        "corpus-invalid-utf8",
        _prepare(lambda w: "shakespeare", _bundled("shakespeare.txt.xz", lambda b: _xz(b"Act I\n\n\xc3\x28 x\n"))),
        ["shakespeare.txt.xz", "UTF-8", "git checkout"],
    ),
    (
        "corpus-bad-jsonl-line",
        _prepare(lambda w: "rotten-tomatoes", _bundled("rotten_tomatoes.jsonl.xz", _bad_jsonl_line)),
        ["rotten_tomatoes.jsonl.xz", "line 101", "not valid JSON"],
    ),
    ("corpus-missing", _prepare(lambda w: "shakespeare", lambda d: None), ["shakespeare.txt.xz", "MOELAB_CORPORA"]),
    # checkpoints and metrics files
    ("truncated-latest-train", _ckpt(_truncate, "train"), ["latest.pt", "unreadable"]),
    ("truncated-best-evaluate", _ckpt(_truncate_best, "evaluate"), ["best.pt", "unreadable"]),
    ("random-bytes-latest-train", _ckpt(_random_bytes, "train"), ["latest.pt", "unreadable"]),
    ("best-over-latest-train", _ckpt(_best_over_latest, "train"), ["latest.pt", "no optimizer", "--restart"]),
    (
        "evil-pickle-latest-train",
        _ckpt(_evil_pickle("latest.pt"), "train"),
        ["latest.pt", "unreadable", "could run code"],
    ),
    ("evil-pickle-best-evaluate", _ckpt(_evil_pickle("best.pt"), "evaluate"), ["best.pt", "could run code"]),
    ("evil-torch-save-evaluate", _ckpt(_evil_torch_save, "evaluate"), ["best.pt", "could run code"]),
    ("other-model-size-evaluate", _args("--model", "e16", stage="evaluate"), ["best.pt", "model"]),
    ("truncated-eval-json-report", _report_of_truncated_eval, ["s0.json", "not valid JSON", "re-run"]),
]


# A case that names a task (`--task`) runs all three seeds of params.yaml side by side, as a study stage does: two
# of them in spawned processes (moelab/parallel.py), about 2 s of start-up and imports per case. These cases keep
# that path (one line, however many runs fail at once); the other in-process ones run the seeds one at a time
# (`--jobs 1`), where the first run's failure ends the command with the same line.
SIDE_BY_SIDE = {"token-id-negative", "missing-tokenizer", "cls-test-texts-missing", "cls-token-id-out-of-range"}
SUBPROCESS = {
    "prepare-hub-offline",
    "truncated-latest-train",
    "evil-pickle-best-evaluate",
    "bad-seed-flag",
    "corpus-truncated-xz",
    "prepare-bad-jsonl-line",
}


def test_the_path_sets_name_real_cases():
    """A misspelt name in SIDE_BY_SIDE or SUBPROCESS would silently move its case to the in-process path."""
    names = {case for case, *_ in BAD}
    assert (SIDE_BY_SIDE | SUBPROCESS) - names == set()


def _moelab(argv, env, cwd, subprocess_, monkeypatch, capfd) -> tuple[int, str]:
    """(exit status, stderr) of `moelab *argv`: in a fresh interpreter (offline env set before any HF
    import), or in-process (fast; an unexplained exception escapes main() and fails the test)."""
    if subprocess_:
        r = subprocess.run(
            [sys.executable, "-m", "moelab", *argv], env=env, capture_output=True, text=True, timeout=120, cwd=cwd
        )
        return r.returncode, r.stderr
    from moelab.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capfd.readouterr().err


@pytest.mark.parametrize("case,setup,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_clear_line_nothing_lost(trained, tmp_path, case, setup, words, monkeypatch, capfd):
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    params = work / "params.yaml"
    extra, opts = setup(work, params)
    stage = extra[0]
    watched = [work / "models", work / "metrics", *opts.get("watch", [])]
    before = digest(*watched)
    pwned = tmp_path / "pwned"
    env = {**ENV, "MOELAB_PWNED": str(pwned), **opts.get("env", {})}
    if opts.get("argv"):
        argv = extra
    elif opts.get("prepare"):
        argv = ["prepare", "--task", "lm", "--params", str(params), *extra[1:]]
    else:
        argv = cli(stage, params, work, "--quiet", *extra[1:], data=opts.get("data", DATA))[3:]
        if stage in ("train", "pretrain", "evaluate") and case not in SIDE_BY_SIDE | SUBPROCESS:
            argv += ["--jobs", "1"]
    rc, stderr = _moelab(argv, env, tmp_path, case in SUBPROCESS, monkeypatch, capfd)
    lines = stderr.strip().splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1, stderr  # no traceback, no warnings
    assert lines[0].startswith(f"moelab {stage}: error: "), lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert digest(*watched) == before  # nothing overwritten
    assert not pwned.exists()  # nothing unpickled / executed
    assert not list((work / "models" / "run").glob(".*.tmp"))
    if opts.get("validation"):  # refused by validating params.yaml, i.e. before any data is read
        rc, check = _moelab(["check", "--params", str(params)], env, tmp_path, False, monkeypatch, capfd)
        assert rc == 2 and check.strip() == lines[0].replace(f"moelab {stage}:", "moelab check:", 1), check


def test_no_trust_remote_code_and_safe_loads():
    src = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert "trust_remote_code=True" not in src
    assert "weights_only=False" not in src
    assert "allow_pickle=True" not in src
