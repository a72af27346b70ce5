"""`moelab train`: a study variant's runs (every seed, `--jobs` at a time), or the experiment."""

from __future__ import annotations

from pathlib import Path

from ..cli import is_rank_zero


def add_arguments(p) -> None:
    from ..select import add_run_arguments

    add_run_arguments(p)
    add_training_arguments(p)


def add_training_arguments(p) -> None:
    p.add_argument(
        "--jobs", type=int, default=0, help="runs at a time, one thread each (0: all at once, the cores shared)"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from step 0 even if a checkpoint exists (the old one is moved aside)",
    )
    p.add_argument("--stop-after", type=int, help="stop after this many steps (checkpointed; for tests)")


def run(args) -> None:
    from ..select import select_runs

    selection = select_runs(args)
    train_runs(selection.runs, selection.data_dir, args)


def train_runs(runs: list, data_dir: Path, args) -> list[dict]:
    """Train every (run, paths), args.jobs at a time (one process under torchrun)."""
    import os

    from ..errors import ConfigError
    from ..parallel import run_all

    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs} is not allowed; allowed: 0 (one per core) or a count >= 1")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    jobs = 1 if distributed else args.jobs or len(runs)  # a variant's seeds, or a task's bases: all at once
    progress = not args.quiet and (jobs == 1 or len(runs) == 1)
    work = [(run, data_dir, paths, progress, args.stop_after, args.restart) for run, paths in runs]
    return run_all(train_one, work, jobs)


def train_one(run, data_dir: Path, paths, progress: bool, stop_after: int | None, restart: bool) -> dict:
    from .loop import train

    metrics = train(run, data_dir, paths, progress=progress, stop_after=stop_after, restart=restart)
    if is_rank_zero():
        print(
            f"trained {run.task}/{run.name}/s{run.seed}: best val loss {metrics['best_val_loss']:.4f} in "
            f"{metrics['wall_s']:.1f}s (world size {metrics['world_size']})",
            flush=True,
        )
    return metrics
