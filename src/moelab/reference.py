"""`moelab references --task T`: the task's reference rows (tasks/<task>.py `references`: trivial ones
such as majority, unigram or lead-N, and classical ones such as bag-of-words logistic regression and
Kneser-Ney n-grams), scored on the same evaluation examples as the models, so every table says what
"good" means. The `references` stage of study/dvc.yaml."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--out", help="JSON: {reference name: metrics} (default metrics/study/<task>/references.json)")
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--params", default="params.yaml")


def run(args) -> None:
    from .resolve import load_params
    from .study import prepared_dir, references_path

    params = load_params(args.params)
    data_dir = Path(args.data_dir) if args.data_dir else prepared_dir(args.task)
    write_references(params, args.task, data_dir, Path(args.out) if args.out else references_path(args.task))


def write_references(params, task_name: str, data_dir: Path, out: Path) -> dict:
    """Score the task's references on its evaluation data and write them to `out` (+ provenance beside)."""
    from .io import write_metrics
    from .resolve import resolve_run
    from .tasks import build_task

    run_cfg = resolve_run(params, task=task_name, dense=True)  # any run of the task: data + evaluate params
    task = build_task(run_cfg, data_dir)
    task.check_data()
    refs = task.references()
    config = run_cfg.to_dict()
    write_metrics(out, refs, {"task": task_name, "data": config["data"], "evaluate": config["evaluate"]})
    for name, values in refs.items():
        shown = {k: round(v, 4) for k, v in values.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"reference {task_name}/{name}: {shown}")
    return refs
