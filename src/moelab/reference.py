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
    from .config import load_params, resolve_run
    from .io import write_metrics
    from .tasks import build_task

    params = load_params(args.params)
    run_cfg = resolve_run(params, task=args.task, dense=True)  # any run of the task: data + evaluate params
    task = build_task(run_cfg, Path(args.data_dir or f"data/prepared/{args.task}"))
    task.check_data()
    refs = task.references()
    write_metrics(
        args.out,
        refs,
        {"task": args.task, "data": run_cfg.to_dict()["data"], "evaluate": run_cfg.to_dict()["evaluate"]},
    )
    for name, values in refs.items():
        shown = {k: round(v, 4) for k, v in values.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"reference {args.task}/{name}: {shown}")
