"""The reference stage: each task's trivial baselines (tasks/<task>.py `references`) on the same
evaluation examples as the models, so every table says what "good" means."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="JSON: {reference name: metrics}")
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--params", default="params.yaml")


def run(args) -> None:
    from .config import load_params

    params = load_params(args.params)
    write_references(params, args.task, args.data_dir or f"data/prepared/{args.task}", args.out)


def write_references(params, task_name: str, data_dir: str | Path, out: str | Path) -> None:
    """Score the task's references on its evaluation data and write them to `out` (+ provenance)."""
    from .config import resolve_run
    from .io import write_metrics
    from .tasks import build_task

    run_cfg = resolve_run(params, task=task_name, dense=True)  # any run of the task: data + evaluate params
    task = build_task(run_cfg, Path(data_dir))
    task.check_data()
    refs = task.references()
    config = run_cfg.to_dict()
    write_metrics(out, refs, {"task": task_name, "data": config["data"], "evaluate": config["evaluate"]})
    for name, values in refs.items():
        shown = {k: round(v, 4) for k, v in values.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"reference {task_name}/{name}: {shown}")
