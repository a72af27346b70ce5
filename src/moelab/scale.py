"""`moelab scale`: the budget study (scale/dvc.yaml, scale/params.yaml) — quality against training
compute, with the study's references drawn in, from which the default study's recipe was chosen.

    run --task T --width W     every variant of scale/params.yaml (the dense baseline and softmax top-2)
                               at width W, trained from scratch at every budget (training steps), then
                               evaluated on the study's validation and test splits
    finetune --task T          from the study's bases (models/base/<task>-<size>), each fine-tune variant
                               at every fine-tune budget: how many steps fresh routers need
    report                     scale/metrics.md (the tables) and scale/plots/<task>.png

A run is the study's own code path (resolve_run, train.loop.train, evaluate.evaluate) with the root
params.yaml overridden only where scale/params.yaml says (the width's preset, the budget's steps, the
training overrides), so its quality is comparable with the study's and its references'. Training
compute is counted two ways: FLOPs (3 x the analytic forward FLOPs of a training batch — forward + the
two matmuls of the backward — x steps; padding positions that are computed count) and the run's wall
seconds on this machine, one thread per run (parallel.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, read_yaml
from .config.load import build
from .config.schema import at_least

DENSE = "dense"
FLOP_BATCHES = 8  # training batches the FLOPs per step are averaged over (their lengths vary)


@dataclass(frozen=True)
class ScaleTask:
    widths: dict[str, dict[str, Any]]  # width name -> a model preset (d_model, n_layers, n_heads, d_ff, n_experts)
    budgets: list[int]  # training steps, from scratch
    train: dict[str, Any] = field(default_factory=dict)  # a whole train section but steps (the budget's)
    finetune: list[int] = field(default_factory=list)  # fine-tune steps from the study's base


@dataclass(frozen=True)
class ScaleParams:
    seed: int = at_least(0)
    variants: list[str] = field(default_factory=list)  # "dense" or a gate preset (with the linear router)
    finetune_variants: list[str] = field(default_factory=list)  # <router>-<gate> or dense
    finetune_size: str = "e8"  # the study's model size whose base the fine-tune curve starts from
    task_names: list[str] = field(default_factory=list)  # the tasks' names (a list: DVC's matrix needs one)
    widths: list[str] = field(default_factory=list)  # the width names every task defines
    tasks: dict[str, ScaleTask] = field(default_factory=dict)


def load_scale(path: str | Path) -> ScaleParams:
    spec = build(ScaleParams, read_yaml(path), "")
    if sorted(spec.task_names) != sorted(spec.tasks):
        raise ConfigError(f"{path}: task_names {spec.task_names} must name exactly the tasks of `tasks`")
    for task, section in spec.tasks.items():
        missing = [w for w in spec.widths if w not in section.widths]
        if missing:
            raise ConfigError(
                f"{path}: tasks.{task}.widths lacks {', '.join(missing)} (every task defines every width)"
            )
        if any(b < 1 for b in [*section.budgets, *section.finetune]):
            raise ConfigError(f"{path}: tasks.{task}: budgets and finetune steps must be >= 1")
    return spec


# ---------------------------------------------------------------- runs
def scale_run(base_raw: dict, spec: ScaleParams, task: str, width: str, variant: str, steps: int) -> RunConfig:
    """One from-scratch run: the root params with this width's preset and `steps` training steps."""
    from .resolve import parse_params, resolve_run

    raw = copy.deepcopy(base_raw)
    section = raw[task]
    section["models"] = {**section["models"], width: spec.tasks[task].widths[width]}
    section["train"] = {**spec.tasks[task].train, **schedule(steps)}  # its own, whole: not the study's fine-tune
    raw["dense"] = {**raw.get("dense", {}), "model": width}
    params = parse_params(raw)
    if variant == DENSE:
        run = resolve_run(params, task=task, dense=True, seed=spec.seed)
    else:
        run = resolve_run(params, task=task, router="linear", gate=variant, model=width, seed=spec.seed)
    from dataclasses import replace

    return replace(run, name=f"{variant}-{width}-{steps}")


def finetune_run(base_raw: dict, spec: ScaleParams, task: str, variant: str, steps: int) -> RunConfig:
    """A fine-tune of the study's recipe from its base (the first model size), for `steps` steps."""
    from dataclasses import replace

    from .resolve import parse_params, resolve_run
    from .study import base_paths

    raw = copy.deepcopy(base_raw)
    raw[task]["train"] = {**raw[task]["train"], **schedule(steps, raw[task]["train"].get("warmup_steps", 0))}
    params = parse_params(raw)
    size = spec.finetune_size
    if variant == DENSE:
        run = resolve_run(
            params, task=task, dense=True, seed=spec.seed, init_from=str(base_paths(task, DENSE).checkpoints)
        )
    else:
        router, gate = variant.split("-", 1)
        init_from = str(base_paths(task, size).checkpoints)
        run = resolve_run(params, task=task, router=router, gate=gate, model=size, seed=spec.seed, init_from=init_from)
    return replace(run, name=f"finetune-{variant}-{steps}")


def schedule(steps: int, warmup: int | None = None) -> dict:
    """A budget's schedule: validation 5 times (best.pt), a checkpoint halfway, warm-up at most a tenth."""
    out = {"steps": steps, "eval_every": max(1, steps // 5), "checkpoint_every": max(1, steps // 2)}
    if warmup is not None:
        out["warmup_steps"] = min(warmup, steps // 10)
    return out


def train_flops(run: RunConfig, data_dir: Path) -> float:
    """3 x the analytic forward FLOPs of an average training batch x steps (grad_accum included)."""
    import torch

    from .tasks import build_task

    task = build_task(run, data_dir)
    generator = torch.Generator().manual_seed(0)
    per_batch = []
    for _ in range(FLOP_BATCHES):
        batch, tokens = task.bench_batch(generator, run.train.batch_size)
        per_batch.append(task.batch_flops_per_token(batch, None)["total"] * tokens)
    return 3 * sum(per_batch) / len(per_batch) * run.train.steps * run.train.grad_accum


def execute(run: RunConfig, data_dir: Path, root: Path) -> dict:
    """Train and evaluate one run into root/<name>; its quality, compute and time."""
    from .evaluate import evaluate
    from .study import RunPaths
    from .train.loop import train

    paths = RunPaths(root / "models", root / "metrics", run.name)
    trained = train(run, data_dir, paths, progress=False)
    evaluated = evaluate(run, data_dir, paths, progress=False)
    quality = {k: v for k, v in evaluated.items() if k.startswith(("val_", "test_")) and isinstance(v, float)}
    print(f"scale {run.task}/{run.name}: {dict((k, round(v, 4)) for k, v in quality.items() if k.startswith('test_'))}")
    return {
        "name": run.name,
        "steps": run.train.steps,
        "train_tokens": trained.get("train_tokens"),
        "train_flops": train_flops(run, data_dir),
        "train_s": trained["wall_s"],
        "parameters": trained["parameters"],
        "routing_entropy_ratio": evaluated.get("routing_entropy_ratio"),
        **quality,
    }


# ---------------------------------------------------------------- `moelab scale`
def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    run = sub.add_parser("run", help="train + evaluate every variant x budget of one task and width")
    run.add_argument("--task", required=True)
    run.add_argument("--width", required=True)
    tune = sub.add_parser("finetune", help="fine-tune each fine-tune variant from the study's base at every budget")
    tune.add_argument("--task", required=True)
    report = sub.add_parser("report", help="the tables and plots")
    report.add_argument("--md", default="scale/metrics.md")
    report.add_argument("--plots", default="scale/plots")
    for parser in (run, tune, report):
        parser.add_argument("--params", default="scale/params.yaml", help="the budget study's params")
        parser.add_argument("--base-params", default="params.yaml", help="the root params every run overrides")
        parser.add_argument(
            "--out", default="scale/metrics", help="<out>/<task>-<width>.json, <out>/<task>-finetune.json"
        )
    for parser in (run, tune):
        parser.add_argument("--jobs", type=int, default=0, help="runs at a time, one thread each (0: one per core)")
        parser.add_argument("--models-dir", default="models/scale", help="checkpoints (resumable)")


def run(args) -> None:
    from .io import write_json
    from .parallel import run_all
    from .study import prepared_dir

    spec = load_scale(args.params)
    base_raw = read_yaml(args.base_params)
    if args.action == "report":
        from .scale_report import write_report

        write_report(spec, Path(args.out), Path(args.md), Path(args.plots))
        return
    task = args.task
    if task not in spec.tasks:
        raise ConfigError(f"--task {task!r} is not a task of {args.params}; allowed: {', '.join(spec.tasks)}")
    section = spec.tasks[task]
    if args.action == "run":
        if args.width not in spec.widths:
            raise ConfigError(f"--width {args.width!r} is not allowed; allowed: {', '.join(spec.widths)}")
        runs = [scale_run(base_raw, spec, task, args.width, v, b) for v in spec.variants for b in section.budgets]
        name = f"{task}-{args.width}"
    else:
        runs = [finetune_run(base_raw, spec, task, v, b) for v in spec.finetune_variants for b in section.finetune]
        name = f"{task}-finetune"
    root = Path(args.models_dir) / name
    costs = [r.train.steps * (1.5 if r.model.moe is not None else 1.0) for r in runs]  # MoE steps cost more
    results = run_all(execute, [(r, prepared_dir(task), root) for r in runs], args.jobs, costs)
    write_json(Path(args.out) / f"{name}.json", {"task": task, "runs": results})
