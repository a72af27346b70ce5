"""Directory locks: one process at a time writes a models directory (or a prepared-data directory);
a second gets one line naming the holder; a crashed holder's lock is gone with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from test_robust import ENV, cli, tiny_params


@pytest.fixture(scope="module")
def data(prepared) -> Path:
    return prepared("lm")


def test_a_held_directory_is_refused_in_one_line(tmp_path):
    from moelab.errors import LockError
    from moelab.locking import directory_lock

    with directory_lock(tmp_path, "checkpoints"):
        with pytest.raises(LockError) as err, directory_lock(tmp_path, "checkpoints"):
            pass
        assert f"pid {os.getpid()}" in str(err.value) and "\n" not in str(err.value)
    with directory_lock(tmp_path, "checkpoints"):  # released on exit
        pass


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


def test_second_train_on_the_same_directory_is_refused_and_a_crash_releases_the_lock(tmp_path, data, capfd):
    """Two `moelab train` on one models directory would interleave checkpoints: the second is refused
    (one line naming the holder, exit 2, the holder undisturbed); SIGKILL of the holder frees the
    directory, and the next run resumes from the holder's last checkpoint."""
    from moelab.cli import main

    params = tiny_params(tmp_path / "params.yaml", steps=100_000)
    train = cli("train", params, tmp_path, "--quiet", data=data)
    holder = subprocess.Popen(train, env=ENV, stderr=subprocess.PIPE)
    try:
        wait_for(tmp_path / "models" / "run" / "latest.pt", holder)
        capfd.readouterr()
        assert main(train[3:]) == 2  # the second run (in this process)
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("moelab train: error: "), lines
        assert f"pid {holder.pid}" in lines[0] and "locked" in lines[0] and "another directory" in lines[0], lines[0]
        assert holder.poll() is None, "the second run must not disturb the first"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    saved = torch.load(tmp_path / "models" / "run" / "latest.pt", weights_only=True)["step"]
    assert main([*train[3:], "--stop-after", str(saved + 1)]) == 0
    assert torch.load(tmp_path / "models" / "run" / "latest.pt", weights_only=True)["step"] == saved + 1
    assert json.loads((tmp_path / "metrics" / "train" / "run.json").read_text())["resumed_from_step"] == saved


def test_second_prepare_of_the_same_directory_is_refused(tmp_path, capfd):
    from moelab.cli import main
    from moelab.locking import directory_lock

    out = tmp_path / "prepared" / "lm"
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    with directory_lock(out.parent / ".lm.lockdir", "prepared data"):  # held by this process: another open
        capfd.readouterr()
        assert main(["prepare", "--task", "lm", "--out", str(out), "--params", str(params)]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "prepared data" in lines[0], lines
    assert not out.exists()
