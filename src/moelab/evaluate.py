"""The evaluate stage: quality on validation and test, routing statistics, samples."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_model_state
from .config import RunConfig
from .io import atomic_write_text, write_metrics
from .moe import RoutingStats
from .tasks import build_task


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
        handles = [l.register_forward_hook(hook(i)) for i, l in enumerate(self.layers)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summary(self) -> dict:
        """Overall means across MoE layers plus the per-layer detail."""
        layers = [s.summary() for s in self.stats]
        if not layers:
            return {"experts_per_token": None, "load_cv": None, "routing_entropy": None,
                    "dropped_fraction": None, "layers": []}
        mean = lambda key: sum(l[key] for l in layers) / len(layers)  # noqa: E731
        return {"experts_per_token": mean("experts_per_token"), "load_cv": mean("load_cv"),
                "routing_entropy": mean("routing_entropy"), "dropped_fraction": mean("dropped_fraction"),
                "layers": layers}


def load_trained(run: RunConfig, task, model_dir: Path, which: str = "best.pt"):
    model = task.build_model()
    path = model_dir / which
    load_model_state(model, load_checkpoint(path), path, run.to_dict())
    return model.eval()


def evaluate(run: RunConfig, data_dir: str | Path, model_dir: str | Path, metrics_path: str | Path,
             samples_path: str | Path | None = None, progress: bool = True) -> dict:
    torch.manual_seed(run.seed)
    task = build_task(run, Path(data_dir))
    task.check_data()                        # every split readable before the checkpoint is loaded
    model = load_trained(run, task, Path(model_dir))
    collector = StatsCollector(model)
    with torch.no_grad():
        metrics, samples = task.evaluate(model, collector, progress=progress)
    if samples_path:
        atomic_write_text(samples_path, samples)
    write_metrics(metrics_path, metrics, run.to_dict())
    return metrics
