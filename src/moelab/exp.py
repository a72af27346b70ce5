"""`moelab exp`: the one experiment (params.yaml's scalar keys: `dvc exp run -S router=attention`),
trained, then evaluated, in one process — the `exp` stage. One process start and torch import for
both: the experiment is the command a user waits for.

Besides the run's own train and eval files (study.py's layout under metrics/exp), it writes
metrics/exp/headline.json, the few numbers `dvc exp show` and `dvc metrics diff` compare across
experiments: the task's headline quality (and bits per character for the LM), test loss, experts and
FLOPs per token, load CV, routing entropy / ln E, training seconds, parameters.
"""

from __future__ import annotations

from pathlib import Path

HEADLINE = Path("metrics/exp/headline.json")
ROUTING = ("experts_per_token", "flops_per_token", "load_cv", "routing_entropy_ratio")


def add_arguments(p) -> None:
    from .select import add_run_arguments

    add_run_arguments(p)
    p.add_argument("--headline", default=str(HEADLINE), help="the experiment's DVC metrics file")


def run(args) -> None:
    from .errors import ConfigError
    from .evaluate import evaluate
    from .io import write_json
    from .parallel import one_thread
    from .select import select_runs
    from .train.cli import train_one

    if args.task or args.dense:
        raise ConfigError(
            "moelab exp runs the experiment (params.yaml's scalar keys): use moelab train/evaluate for a variant"
        )
    selection = select_runs(args)
    ((run_cfg, paths),) = selection.runs
    one_thread()  # as every run of the study (parallel.py)
    trained = train_one(run_cfg, selection.data_dir, paths, not args.quiet, None, False)
    evaluated = evaluate(run_cfg, selection.data_dir, paths, not args.quiet)
    write_json(args.headline, headline(run_cfg.task, evaluated, trained))
    print(f"experiment {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: {headline(run_cfg.task, evaluated, trained)}")


def headline(task: str, evaluated: dict, trained: dict) -> dict:
    """Numbers only, rounded to 6 significant digits (a stable `dvc metrics diff`)."""
    from .tasks import TASKS

    first = f"test_{TASKS.get(task, 'task').metrics[0].key}"
    keys = [first, "test_bpc", "test_loss", *ROUTING]
    values = {k: evaluated.get(k) for k in keys if isinstance(evaluated.get(k), (int, float))}
    values.update(train_s=trained["wall_s"], parameters=trained["parameters"])
    return {k: float(f"{v:.6g}") for k, v in values.items()}
