"""`moelab cell`: train, then evaluate, one run or every seed of a study variant, in one process;
with --every-variant, every variant of one task (study.py).

The experiment's stage (dvc.yaml `exp`) and the study's (study.py, once per variant): one process
start and one torch import for training and evaluation together. A finished run is not trained
again (its checkpoint records its config and code); a run is not evaluated again when its metrics
were written for the same config, checkpoint and evaluation code (`skip_evaluated`).

Layout: one run writes train.json, live/, eval.json, samples.md into --metrics-dir itself;
--all-seeds writes <dir>/train/s<seed>.json (+ live/s<seed>) and <dir>/eval/s<seed>.json.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    from .config.cli import add_cell_arguments

    add_cell_arguments(p)
    p.add_argument("--models-dir", required=True, help="checkpoints (with --all-seeds: <dir>/s<seed>)")
    p.add_argument(
        "--metrics-dir",
        required=True,
        help="train.json, eval.json, live/, samples.md (with --all-seeds: <dir>/train/s<seed>.json, "
        "<dir>/eval/s<seed>.json)",
    )
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--every-variant",
        action="store_true",
        help="the study of --task: its references, then every router x gate x model and the dense baseline, "
        "every seed (checkpoints <models-dir>/<variant>/s<seed>, metrics <metrics-dir>/<variant>)",
    )


def run(args) -> None:
    from .config.cli import runs_from_args

    if args.every_variant:
        from .errors import ConfigError
        from .study import run_task

        named = [f"--{flag}" for flag in ("router", "gate", "model", "seed") if getattr(args, flag) is not None]
        named += [f"--{flag.replace('_', '-')}" for flag in ("all_seeds", "dense") if getattr(args, flag)]
        if named or not args.task:
            raise ConfigError(
                f"--every-variant runs every variant and seed of params.yaml for one --task; "
                f"{'it takes no ' + ', '.join(named) if named else 'name the --task'}"
            )
        return run_task(args)
    _, runs = runs_from_args(args)
    run_variant(runs, Path(args.models_dir), Path(args.metrics_dir), args.data_dir, args.all_seeds, not args.quiet)


class Paths:
    """Where one run's checkpoints and metrics go (see the module doc for the two layouts)."""

    def __init__(self, models_dir: Path, metrics_dir: Path, seed: int, many: bool):
        name = f"s{seed}" if many else ""
        self.models = models_dir / name
        train_dir, eval_dir = (metrics_dir / "train", metrics_dir / "eval") if many else (metrics_dir, metrics_dir)
        self.train = train_dir / f"{name or 'train'}.json"
        self.live = train_dir / "live" / name
        self.eval = eval_dir / f"{name or 'eval'}.json"
        self.samples = eval_dir / (f"{name}.samples.md" if many else "samples.md")
        self.stamp = eval_dir / f"{name or 'eval'}.stamp.json"  # what eval.json was computed from


def run_variant(runs, models_dir: Path, metrics_dir: Path, data_dir: str | None, many: bool, progress: bool) -> None:
    """Train every run of `runs` (the seeds of one variant), then evaluate each."""
    from .evaluate import evaluate
    from .io import write_json
    from .train.loop import train

    paths = [Paths(models_dir, metrics_dir, r.seed, many) for r in runs]
    data_dir = data_dir or f"data/prepared/{runs[0].task}"  # the seeds of one variant share a task
    for run_cfg, p in zip(runs, paths):
        metrics = train(run_cfg, data_dir, p.models, p.train, p.live, progress)
        print(
            f"trained {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: best val loss "
            f"{metrics['best_val_loss']:.4f} in {metrics['wall_s']:.1f}s"
        )
    for run_cfg, p in zip(runs, paths):
        stamp = evaluation_stamp(run_cfg, p)
        if skip_evaluated(p, stamp):
            print(f"evaluated {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: up to date ({p.eval})")
            continue
        m = evaluate(run_cfg, data_dir, p.models, p.eval, p.samples, progress)
        write_json(p.stamp, stamp)
        headline = {k: round(v, 4) for k, v in m.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"evaluated {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: {headline}")


def evaluation_stamp(run_cfg, p: Paths) -> dict:
    """What a run's evaluation depends on: its config (evaluation params included), the checkpoint
    it reads and the evaluation code (stages.py EVALUATE_CODE)."""
    import hashlib
    import json

    from .provenance import code_hash
    from .stages import EVALUATE_CODE

    config = json.dumps(run_cfg.to_dict(), sort_keys=True, default=str)
    return {
        "config": hashlib.sha256(config.encode()).hexdigest()[:16],
        "checkpoint": hashlib.sha256((p.models / "best.pt").read_bytes()).hexdigest()[:16],
        "code": code_hash(EVALUATE_CODE),
    }


def skip_evaluated(p: Paths, stamp: dict) -> bool:
    """Whether p.eval was written from exactly `stamp` (and its files are all there)."""
    import json

    from .io import meta_path

    routing = p.eval.with_name(f"{p.eval.stem}.routing.json")
    if not all(f.is_file() for f in (p.eval, meta_path(p.eval), routing, p.samples, p.stamp)):
        return False
    try:
        return json.loads(p.stamp.read_text()) == stamp
    except ValueError:  # a stamp cut short: evaluate again
        return False
