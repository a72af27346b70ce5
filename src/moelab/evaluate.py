"""The evaluate stage: quality on validation and test, routing statistics, samples.

Writes eval.json (numbers only: what `dvc metrics` shows), eval.meta.json (provenance),
eval.routing.json (per-layer routing detail, expert specialisation) and samples.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_model_state
from .config import RunConfig
from .io import atomic_write_text, write_json, write_metrics
from .moe import RoutingStats
from .tasks import build_task

DETAIL_KEYS = ("layers", "specialisation")  # structured detail kept out of the metrics file


class StatsCollector:
    """Sums each MoE layer's RoutingStats over every forward pass while active."""

    def __init__(self, model: torch.nn.Module):
        self.layers = model.moe_layers()
        self.stats = [RoutingStats() for _ in self.layers]

    @contextmanager
    def collecting(self):
        def hook(i):
            def add(module, args, output):
                self.stats[i] += module.last_stats

            return add

        handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summary(self) -> dict:
        """Overall means across MoE layers plus the per-layer detail."""
        layers = [s.summary() for s in self.stats]
        keys = ("experts_per_token", "load_cv", "max_violation", "router_z", "routing_entropy", "dropped_fraction")
        if not layers:
            return {**dict.fromkeys(keys), "layers": []}
        return {**{k: sum(layer[k] for layer in layers) / len(layers) for k in keys}, "layers": layers}


def load_trained(run: RunConfig, task, model_dir: Path, which: str = "best.pt"):
    model = task.build_model()
    path = model_dir / which
    load_model_state(model, load_checkpoint(path), path, run.to_dict())
    return model.eval()


def evaluate(
    run: RunConfig,
    data_dir: str | Path,
    model_dir: str | Path,
    metrics_path: str | Path,
    samples_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    torch.manual_seed(run.seed)
    task = build_task(run, Path(data_dir))
    task.check_data()  # every split readable before the checkpoint is loaded
    model = load_trained(run, task, Path(model_dir))
    collector = StatsCollector(model)
    with torch.no_grad():
        metrics, samples = task.evaluate(model, collector, progress=progress)
    headline = {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
    detail = {k: metrics[k] for k in DETAIL_KEYS if k in metrics}
    metrics_path = Path(metrics_path)
    write_json(metrics_path.with_name(f"{metrics_path.stem}.routing.json"), detail)
    if samples_path:
        atomic_write_text(samples_path, samples)
    write_metrics(metrics_path, headline, run.to_dict())
    return metrics


# ---------------------------------------------------------------- `moelab evaluate`
def add_arguments(p) -> None:
    from .config.cli import add_cell_arguments

    add_cell_arguments(p)
    p.add_argument("--models-dir", required=True, help="checkpoints (with --all-seeds: <dir>/s<seed>)")
    p.add_argument(
        "--metrics-dir",
        required=True,
        help="eval.json, samples.md (with --all-seeds: s<seed>.json, s<seed>.samples.md)",
    )
    p.add_argument("--data-dir", help="prepared data (default data/prepared/<task>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> None:
    from .config.cli import runs_from_args

    _, runs = runs_from_args(args)
    many = getattr(args, "all_seeds", False)
    for run_cfg in runs:
        name = f"s{run_cfg.seed}" if many else "eval"
        out = Path(args.metrics_dir)
        m = evaluate(
            run_cfg,
            args.data_dir or f"data/prepared/{run_cfg.task}",
            Path(args.models_dir) / (f"s{run_cfg.seed}" if many else ""),
            out / f"{name}.json",
            out / (f"{name}.samples.md" if many else "samples.md"),
            progress=not args.quiet,
        )
        headline = {k: round(v, 4) for k, v in m.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"evaluated {run_cfg.task}/{run_cfg.name}/s{run_cfg.seed}: {headline}")
