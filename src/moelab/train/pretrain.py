"""`moelab pretrain --task T`: train the bases of one task, one per model size of params.yaml and one for
the dense baseline, side by side (the `pretrain` stage of study/dvc.yaml; `--model S` / `--dense`: one of
them). Every variant of a size fine-tunes from its size's base with fresh routing, and the dense baseline
from the dense base (train/cli.py). One stage per task, not per base: a single run leaves one of the two
cores of a small CPU idle, and DVC runs one stage at a time; a base whose fingerprint did not change is
not retrained when the stage re-runs (train/loop.py). By default every base gets a process of its own
(`--jobs`: one per base, even beyond the cores): the bases differ in cost (16 experts cost more than 8),
so the operating system sharing the cores among them finishes sooner than a fixed split would; every
run has one thread, so how many share a core changes its seconds, never its numbers."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    from .cli import add_training_arguments

    p.add_argument("--task", required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--model", help="only the base of this model-size preset")
    size.add_argument("--dense", action="store_true", help="only the dense baseline's base")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_training_arguments(p)


def run(args) -> None:
    from ..resolve import DENSE, load_params
    from ..study import base_paths, base_run, base_sizes, prepared_dir
    from .cli import train_runs

    params = load_params(args.params)
    sizes = [DENSE] if args.dense else [args.model] if args.model else base_sizes(params, args.task)
    data_dir = Path(args.data_dir) if args.data_dir else prepared_dir(args.task)
    bases = [(base_run(params, args.task, size), base_paths(args.task, size)) for size in sizes]
    for run, paths in [b for b in bases if b[0].model.pretrained]:
        import_checkpoint(run, data_dir, paths)
    train_runs([b for b in bases if not b[0].model.pretrained], data_dir, args)  # all at once (module doc)


def import_checkpoint(run, data_dir: Path, paths) -> None:
    """The base of a preset with a `pretrained` checkpoint (e.g. google/switch-base-16) is that checkpoint:
    nothing is trained, its weights are written as the base's best.pt (the experts, attention and
    embeddings every variant starts from; the routing is initialised afresh by each variant anyway)."""
    import time

    from ..checkpoint import config_fingerprint, save_checkpoint
    from ..io import write_metrics
    from ..tasks import build_task
    from .loop import fingerprint

    start = time.perf_counter()
    model = build_task(run, data_dir).build_model()
    config = fingerprint(run, data_dir)
    state = {"model": model.state_dict(), "step": 0, "val_loss": None, "config": config_fingerprint(config)}
    save_checkpoint(paths.checkpoints / "best.pt", state)
    metrics = {
        "steps": 0,
        "wall_s": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_metrics(paths.train, metrics, run.to_dict(), {"imported": run.model.pretrained, "code": config["code"]})
    print(f"imported {run.task}/{run.name}: the checkpoint {run.model.pretrained} is the base (nothing trained)")
