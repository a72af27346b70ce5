"""The Task protocol: what a task must provide so that prepare, train, evaluate, bench and report can
run it, and the evaluation skeleton every task shares. A new task is one file in this package (a
subclass of Task registered with `@TASKS.register("name")`) plus a test; nothing else lists tasks.

A task provides
  * its params: `data_params` / `eval_params` (dataclasses, subclasses of the shared ones) and
    `check_params` for cross-field rules;
  * `prepare(data, out)`: corpus -> prepared files (the prepare stage; see data/prepare.py);
  * data: `check_data`, `train_batch` (random, resumable through the generator), `eval_batches`;
  * the model: `build_model`, and `moe_configs` (the MoE layer configs it will build, checked once
    in `moelab check`, e.g. causal ones for a decoder);
  * evaluation: `metrics` (name, label, which direction is better; the first is the headline),
    `evaluate_split` (those metrics on one split), `samples_markdown`;
  * `references`: trivial baselines on the test split, so a table says what "good" means;
  * cost: `flops_per_token`, `bench_batch`, `batch_flops_per_token`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..config.run import RunConfig
from ..config.schema import DataParams, EvalParams, TaskParams
from ..moe import MoEConfig
from ..moe.registry import Registry

SPLITS = ("train", "validation", "test")
TASKS = Registry("task")


@dataclass(frozen=True)
class Metric:
    key: str  # in eval.json as val_<key> and test_<key>
    label: str
    higher_is_better: bool


def prepare_hint(task: str, data_dir: Path) -> str:
    """What to run when the prepared data of `task` in `data_dir` is missing or broken."""
    return f"run `moelab prepare --task {task} --out {data_dir}` (or `dvc repro study/dvc.yaml:prepare@{task}`)"


class Task:
    name: ClassVar[str] = ""
    data_params: ClassVar[type[DataParams]] = DataParams
    eval_params: ClassVar[type[EvalParams]] = EvalParams
    metrics: ClassVar[tuple[Metric, ...]] = ()
    count_key: ClassVar[str] = "examples"  # what a split's size is counted in (eval.json: test_<count_key>)

    def __init__(self, run: RunConfig, data_dir: Path):
        self.run, self.data_dir = run, Path(data_dir)
        self.redo = prepare_hint(self.name, self.data_dir)

    # ---------------------------------------------------------------- params
    @classmethod
    def check_params(cls, section: TaskParams, key: str) -> None:
        """Cross-field rules of this task's params section (raise ConfigError)."""

    @classmethod
    def moe_configs(cls, run: RunConfig) -> list[MoEConfig]:
        """The MoE layer configs the model of `run` is built with (default: the run's, unchanged)."""
        return [run.model.moe] if run.model.moe is not None else []

    @classmethod
    def check_run(cls, run: RunConfig) -> None:
        for cfg in cls.moe_configs(run):
            cfg.validate()

    @staticmethod
    def prepare(data: DataParams, out: Path, seed: int = 0) -> dict:
        raise NotImplementedError

    # ---------------------------------------------------------------- data and model
    def check_data(self) -> None:
        raise NotImplementedError

    def train_batch(self, generator: torch.Generator, batch_size: int) -> dict:
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    # ---------------------------------------------------------------- evaluation
    def evaluate_split(self, model, split: str, progress: bool) -> dict[str, float]:
        """This task's metrics (keys of `metrics`, plus `loss` and count_key) on one split."""
        raise NotImplementedError

    def samples_markdown(self, model) -> str:
        raise NotImplementedError

    def references(self, progress: bool = False) -> dict[str, dict]:
        """{reference name: {"description": ..., "test_<metric>": ..., ...}} of trivial baselines."""
        raise NotImplementedError

    def extra_metrics(self, model) -> dict:
        """Anything else eval.json records (e.g. expert specialisation); called after evaluation."""
        return {}

    def evaluate(self, model, collector, progress: bool = True) -> tuple[dict, str]:
        """Metrics on validation and test (routing statistics collected on test), realised FLOPs, samples."""
        metrics: dict = {}
        for split, prefix in (("validation", "val_"), ("test", "test_")):
            with collector.collecting() if split == "test" else nullcontext():
                values = self.evaluate_split(model, split, progress)
            metrics.update({prefix + k: v for k, v in values.items()})
        routing = collector.summary()
        realised = [layer["experts_per_token"] for layer in routing["layers"]] or None
        metrics["flops_per_token"] = self.flops_per_token(realised)["total"]
        metrics.update(routing)
        metrics.update(self.extra_metrics(model))
        return metrics, self.samples_markdown(model)

    # ---------------------------------------------------------------- cost
    def flops_per_token(self, experts_per_token: list[float] | None = None) -> dict:
        raise NotImplementedError

    def bench_batch(self, generator: torch.Generator, batch_size: int) -> tuple[dict, int]:
        """A training batch whose every position is routed (no padding) and its token count."""
        raise NotImplementedError

    def batch_flops_per_token(self, batch: dict, experts_per_token: list[float] | None) -> dict:
        raise NotImplementedError


def build_task(run: RunConfig, data_dir: str | Path) -> Task:
    """The task of `run` on its prepared data (the directory must exist)."""
    from ..errors import DataError

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"prepared data directory {data_dir} not found: {prepare_hint(run.task, data_dir)}")
    return TASKS.get(run.task, "task")(run, data_dir)


def pad_batch(seqs: list, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id sequences: ids [B, T_max] and mask [B, T_max] (True = real token)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[r, : len(s)] = True
    return ids, mask


def row_batches(n: int, batch_size: int, max_batches: int | None = None) -> Iterator[list[int]]:
    """Consecutive row indices [0, n) in batches of batch_size; at most max_batches of them (None: all)."""
    for b, first in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        yield list(range(first, min(first + batch_size, n)))


def on_device(batch: dict, model: torch.nn.Module) -> dict:
    """The batch's tensors on the model's device (evaluation runs where the model is: a GPU when there is one)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def no_progress(progress: bool):
    """tqdm kwargs: a bar only when asked for."""
    return {"disable": not progress, "mininterval": 1.0}


def maybe_collect(collector, on: bool):
    return collector.collecting() if on else nullcontext()
