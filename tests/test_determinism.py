"""Seeds are a study axis: the same seed must reproduce every metric exactly; another seed must not."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from moelab.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# wall-clock and throughput fields: not expected to repeat
VOLATILE = {"wall_s", "train_tokens_per_s"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, prepared) -> tuple[Path, Path]:
    """(params.yaml with a ~20-step LM run, prepared LM data dir)."""
    tmp = tmp_path_factory.mktemp("determinism")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in ("pretrain", "train"):  # the run fine-tunes from a base, as in the study
        params["lm"][section].update(
            steps=20, batch_size=8, eval_every=10, eval_batches=2, checkpoint_every=10, warmup_steps=4
        )
    params["lm"]["evaluate"].update(max_batches=2, samples=1, sample_tokens=8)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with in_directory(tmp):  # the base goes to models/base/lm/e8 of this project directory
        argv = ["pretrain", "--task", "lm", "--model", "e8", "--quiet", "--params", str(tmp / "params.yaml")]
        assert main([*argv, "--data-dir", str(prepared("lm"))]) == 0
    return tmp / "params.yaml", prepared("lm")


@contextlib.contextmanager
def in_directory(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_once(lab, out: Path, seed: int) -> dict[str, object]:
    params, data = lab
    cell = [
        "--task",
        "lm",
        "--router",
        "linear",
        "--gate",
        "sparsemax",
        "--model",
        "e8",
        "--seed",
        str(seed),
        "--params",
        str(params),
        "--data-dir",
        str(data),
        "--models-dir",
        str(out / "model"),
        "--metrics-dir",
        str(out / "metrics"),
        "--quiet",
    ]
    with in_directory(params.parent):
        assert main(["train", *cell]) == 0
        assert main(["evaluate", *cell]) == 0
    m, run = out / "metrics", f"s{seed}"
    return {
        "train": stable(json.loads((m / "train" / f"{run}.json").read_text())),
        "eval": {
            **stable(json.loads((m / "eval" / f"{run}.json").read_text())),
            **json.loads((m / "eval" / f"{run}.routing.json").read_text()),
        },
        "meta": stable(
            {k: v for k, v in json.loads((m / "eval" / f"{run}.meta.json").read_text()).items() if k != "versions"}
        ),
        "samples": (m / "eval" / f"{run}.samples.md").read_text(),
        "curves": {
            p.relative_to(m).as_posix(): p.read_text()
            for p in sorted((m / "train" / "live" / run / "plots" / "metrics").rglob("*.tsv"))
        },
    }


def stable(record: dict) -> dict:
    """The record without timing fields."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def runs(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return run_once(lab, tmp / "a", 0), run_once(lab, tmp / "b", 0), run_once(lab, tmp / "c", 1)


def test_same_seed_reproduces_every_metric(runs):
    a, b, _ = runs
    assert a["train"]["steps"] == 20
    for key in ("test_ppl", "val_ppl", "load_cv", "experts_per_token", "layers", "specialisation"):
        assert key in a["eval"], key
    assert a["train"] == b["train"]
    assert a["eval"] == b["eval"]  # exact: ppl, routing stats, histograms, specialisation
    assert a["meta"] == b["meta"] and a["meta"]["config"]["seed"] == 0
    assert a["curves"] == b["curves"] and a["curves"]
    assert a["samples"] == b["samples"]


def test_another_seed_differs(runs):
    a, _, c = runs
    assert c["train"]["train_loss"] != a["train"]["train_loss"]
    assert c["eval"]["test_loss"] != a["eval"]["test_loss"]
    assert c["eval"]["layers"][0]["tokens_per_expert"] != a["eval"]["layers"][0]["tokens_per_expert"]
    assert c["curves"] != a["curves"]


def test_experts_per_token_histogram_is_consistent(runs):
    a = runs[0]["eval"]
    for layer in a["layers"]:
        hist = layer["experts_per_token_hist"]
        assert sum(hist) == layer["tokens"]  # every routed token counted once
        mean = sum(i * c for i, c in enumerate(hist)) / sum(hist)
        assert mean == pytest.approx(layer["experts_per_token"])  # dropless: kept slots / tokens
