"""`moelab exp`: the one experiment (params.yaml's scalar keys: `dvc exp run -S router=attention`),
trained, then evaluated, in one process — the `exp` stage. One process start and torch import for
both: the experiment is the command a user waits for."""

from __future__ import annotations


def add_arguments(p) -> None:
    from .select import add_run_arguments

    add_run_arguments(p)


def run(args) -> None:
    from .errors import ConfigError
    from .evaluate import evaluate_one
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
    train_one(run_cfg, selection.data_dir, paths, not args.quiet, None, False)
    evaluate_one(run_cfg, selection.data_dir, paths, not args.quiet)
