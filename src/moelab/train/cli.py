"""`moelab train`: one run, or (--all-seeds) every seed of a study variant in one process."""

from __future__ import annotations

from pathlib import Path

from ..cli import is_rank_zero
from ..config.cli import add_cell_arguments, runs_from_args


def add_arguments(p) -> None:
    add_cell_arguments(p)
    p.add_argument("--models-dir", required=True, help="checkpoints (with --all-seeds: <dir>/s<seed>)")
    p.add_argument(
        "--metrics-dir", required=True, help="train.json and live/ (with --all-seeds: s<seed>.json and live/s<seed>)"
    )
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from step 0 even if a checkpoint exists (the old one is moved aside)",
    )
    p.add_argument("--stop-after", type=int, help="stop after this many steps (checkpointed; for tests)")


def run(args) -> None:
    from .loop import train

    _, runs = runs_from_args(args)
    many = getattr(args, "all_seeds", False)
    for run_cfg in runs:
        models = Path(args.models_dir) / (f"s{run_cfg.seed}" if many else "")
        metrics_dir = Path(args.metrics_dir)
        metrics_path = metrics_dir / (f"s{run_cfg.seed}.json" if many else "train.json")
        live = metrics_dir / "live" / (f"s{run_cfg.seed}" if many else "")
        metrics = train(
            run_cfg,
            args.data_dir or f"data/prepared/{run_cfg.task}",
            models,
            metrics_path,
            live_dir=live,
            progress=not args.quiet,
            stop_after=args.stop_after,
            restart=args.restart,
        )
        if is_rank_zero():
            print(
                f"trained {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: best val loss "
                f"{metrics['best_val_loss']:.4f} in {metrics['wall_s']:.1f}s (world size {metrics['world_size']})"
            )
