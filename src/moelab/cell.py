"""`moelab cell`: train every seed of one study variant, then evaluate each, in one process.

The study's matrix stage (dvc.yaml `cell@...`, `dense@...`): one process start and one torch import
per variant instead of one for training and another for evaluation. A finished run is not trained
again (its checkpoint records its config and code), so when only evaluation changed, the stage
re-evaluates.
"""

from __future__ import annotations

import argparse


def add_arguments(p) -> None:
    from .config.cli import add_cell_arguments

    add_cell_arguments(p)
    p.add_argument("--models-dir", required=True, help="checkpoints (with --all-seeds: <dir>/s<seed>)")
    p.add_argument(
        "--metrics-dir", required=True, help="<dir>/train: what `moelab train` writes; <dir>/eval: `moelab evaluate`"
    )
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> None:
    from . import evaluate
    from .train import cli as train_cli

    common = vars(args)
    train_cli.run(
        argparse.Namespace(**{**common, "metrics_dir": f"{args.metrics_dir}/train"}, restart=False, stop_after=None)
    )
    evaluate.run(argparse.Namespace(**{**common, "metrics_dir": f"{args.metrics_dir}/eval"}))
