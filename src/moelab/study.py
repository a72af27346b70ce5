"""The study's matrix and where everything lives: the one place that says which variants a task has,
which runs a variant has, and the path of every checkpoint and metrics file. The pipeline's stages
(study/dvc.yaml), the benchmark, the report and the params check all ask this module.

    variant   task x router x gate x model size (routers x gates x models of params.yaml), and the
              dense baseline; named <router>-<gate>-<size>, or dense
    run       a variant at one seed (params.yaml `seeds`); the experiment (params.yaml's scalar keys)
              is one more run, of its own
    base      the model a task's variants of one size fine-tune from (params.yaml `base` and
              `<task>.pretrain`): base-<size>, and base-dense for the dense baseline

Layout (relative to the repo root; RunPaths below):

    data/prepared/<task>/                             prepare@<task>
    metrics/study/<task>/references.json              references@<task>
    models/base/<task>/<size>/{latest,best}.pt        pretrain@<task>: every size's base, and dense's
    metrics/base/<task>/train/<size>.json             their training metrics (+ live/<size>/: curves)
    models/<task>/<variant>/s<seed>/best.pt           train@<task>-<router>-<gate>-<size>, train-dense@<task>
    metrics/study/<task>/<variant>/train/s<seed>.json             (+ .meta.json, live/s<seed>/)
    metrics/study/<task>/<variant>/eval/s<seed>.json  evaluate@...  (+ .meta.json, .routing.json, .samples.md)
    models/exp/run/, metrics/exp/{train,eval}/run.json    the experiment (`exp` stage)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params, RunConfig
from .resolve import BASE, DENSE, resolve_base, resolve_run, task_params

MODELS, METRICS = Path("models"), Path("metrics")
STUDY = METRICS / "study"
EXP_RUN = "run"  # the experiment's run id (its files do not move when -S seed=... changes)


@dataclass(frozen=True)
class Variant:
    """One variant of a task's study: an MoE cell (router, gate, size) or the dense baseline."""

    task: str
    router: str | None = None  # None: the dense baseline
    gate: str | None = None
    size: str | None = None

    @property
    def dense(self) -> bool:
        return self.router is None

    @property
    def name(self) -> str:
        return DENSE if self.dense else f"{self.router}-{self.gate}-{self.size}"

    def __str__(self) -> str:
        return f"{self.task}/{self.name}"


def variants(params: Params, task: str) -> list[Variant]:
    """Every MoE variant of `task` (routers x gates x models, in params.yaml order), then the dense baseline."""
    cells = [Variant(task, r, g, m) for r in params.routers for g in params.gates for m in params.models]
    return [*cells, Variant(task)]


def base_sizes(params: Params, task: str) -> list[str]:
    """The bases `task` pretrains: one per model size, and the dense baseline's (none without `pretrain`)."""
    return [*params.models, DENSE] if task_params(params, task).pretrain is not None else []


def base_of(params: Params, variant: Variant) -> str | None:
    """The base directory a variant fine-tunes from (None: its task has no `pretrain`)."""
    if task_params(params, variant.task).pretrain is None:
        return None
    return str(base_paths(variant.task, DENSE if variant.dense else variant.size).checkpoints)


def runs(params: Params, variant: Variant, seeds: list[int] | None = None) -> list[RunConfig]:
    """The variant's run at every seed of params.yaml (or of `seeds`)."""
    init_from = base_of(params, variant)
    return [
        resolve_run(
            params,
            task=variant.task,
            router=variant.router,
            gate=variant.gate,
            model=variant.size,
            seed=seed,
            dense=variant.dense,
            init_from=init_from,
        )
        for seed in (params.seeds if seeds is None else seeds)
    ]


def experiment(params: Params) -> RunConfig:
    """The one experiment: params.yaml's scalar keys, fine-tuned from its task's base of its size (a
    preset with a `pretrained` checkpoint, e.g. the paper preset, starts from that checkpoint instead)."""
    run = resolve_run(params)
    if task_params(params, run.task).pretrain is None or run.model.pretrained:
        return run
    return resolve_run(params, init_from=str(base_paths(run.task, run.preset).checkpoints))


def base_run(params: Params, task: str, size: str) -> RunConfig:
    return resolve_base(params, task, size)


# ---------------------------------------------------------------- paths
@dataclass(frozen=True)
class RunPaths:
    """Where one run's files go: <models>/<run>/ (checkpoints), <metrics>/train/<run>.json (+ .meta.json,
    live/<run>/), <metrics>/eval/<run>.json (+ .meta.json, .routing.json, .samples.md)."""

    models: Path  # the variant's checkpoint directory
    metrics: Path  # the variant's metrics directory
    run: str  # s<seed>, or the experiment's / a base's fixed id

    @property
    def checkpoints(self) -> Path:
        return self.models / self.run

    @property
    def train(self) -> Path:
        return self.metrics / "train" / f"{self.run}.json"

    @property
    def live(self) -> Path:
        return self.metrics / "train" / "live" / self.run

    @property
    def eval(self) -> Path:
        return self.metrics / "eval" / f"{self.run}.json"

    @property
    def routing(self) -> Path:
        return self.metrics / "eval" / f"{self.run}.routing.json"

    @property
    def samples(self) -> Path:
        return self.metrics / "eval" / f"{self.run}.samples.md"


def seed_run(seed: int) -> str:
    return f"s{seed}"


def run_paths(variant: Variant, seed: int) -> RunPaths:
    return RunPaths(MODELS / variant.task / variant.name, STUDY / variant.task / variant.name, seed_run(seed))


def exp_paths() -> RunPaths:
    return RunPaths(MODELS / "exp", METRICS / "exp", EXP_RUN)


def base_paths(task: str, size: str) -> RunPaths:
    return RunPaths(MODELS / BASE / task, METRICS / BASE / task, size)


def references_path(task: str) -> Path:
    return STUDY / task / "references.json"


def prepared_dir(task: str) -> Path:
    return Path("data") / "prepared" / task
