import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share two cores: a torch on two threads beside another busy process slows 10-20x
    # (OpenMP's threads wait on each other), so each worker and the commands it starts use one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """Files with a slow test (marker `slow`: it runs dvc, a minute or more) first. The xdist workers take
    whole files in collection order (--dist loadfile); a long file picked up last left one worker running
    it alone for minutes, so the longest files start first and the short ones fill in around them."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group stays


@pytest.fixture
def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params_file(tmp_path, repo_params):
    """Write a (modified) copy of the repo's params.yaml; returns a function taking overrides."""

    def write(mutate=None, name="params.yaml") -> Path:
        data = copy.deepcopy(repo_params)
        if mutate:
            mutate(data)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def loop_experts(model):
    """Run every MoE layer's experts as a Python loop of plain matmuls (the fallback path), so that
    torch's FlopCounterMode counts them with its own mm formula: an independent reference, not the
    grouped-matmul formula moelab registers (which tests/test_bench.py checks against this)."""
    from moelab.moe import MoELayer

    for m in model.modules():
        if isinstance(m, MoELayer):
            m.experts.use_grouped_mm = False
    return model


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """prepared(task) -> a directory holding the bundled corpus of `task` prepared with the repo's
    params (once per test session): the one way tests get prepared data."""
    from moelab.cli import main

    cache: dict[str, Path] = {}

    def get(task: str = "lm") -> Path:
        if task not in cache:
            out = tmp_path_factory.mktemp(f"prepared-{task}") / task
            assert main(["prepare", "--task", task, "--out", str(out), "--params", str(ROOT / "params.yaml")]) == 0
            cache[task] = out
        return cache[task]

    return get
