"""The evaluate stage: quality on validation and test, routing statistics, samples, of each run a
variant's flags name (select.py), every seed `--jobs` at a time.

Writes eval/<run>.json (numbers only: what `dvc metrics` shows), eval/<run>.meta.json (provenance),
eval/<run>.routing.json (per-layer routing detail, expert specialisation) and eval/<run>.samples.md.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_model_state
from .config import RunConfig
from .io import atomic_write_text, write_json, write_metrics
from .moe import RoutingStats
from .study import RunPaths
from .tasks import build_task

DETAIL_KEYS = ("layers", "specialisation")  # structured detail kept out of the metrics file


class StatsCollector:
    """Sums each MoE layer's RoutingStats over every forward pass while active."""

    def __init__(self, model: torch.nn.Module):
        from .moe import MoELayer

        named = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]
        self.names = [name for name, _ in named]  # e.g. blocks.1.ffn, hf.decoder.block.1.layer.2.mlp.moe
        self.layers = [m for _, m in named]
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
        layers = []
        for name, layer, stats in zip(self.names, self.layers, self.stats):
            summary = stats.summary()
            n = (
                layer.cfg.n_routed
            )  # entropy / ln E: 1 = every token spread evenly (an untrained router), 0 = one expert
            ratio = summary["routing_entropy"] / math.log(n) if n > 1 else 0.0
            layers.append({"module": name, "n_experts": n, **summary, "routing_entropy_ratio": ratio})
        keys = (
            "experts_per_token",
            "load_cv",
            "max_violation",
            "router_z",
            "routing_entropy",
            "routing_entropy_ratio",
            "dropped_fraction",
        )
        if not layers:
            return {**dict.fromkeys(keys), "layers": []}
        return {**{k: sum(layer[k] for layer in layers) / len(layers) for k in keys}, "layers": layers}


def load_trained(run: RunConfig, task, model_dir: Path, which: str = "best.pt"):
    """The trained model in eval mode, on the GPU when there is one (the tasks move each batch to it)."""
    model = task.build_model()
    path = model_dir / which
    load_model_state(model, load_checkpoint(path), path, run.to_dict())
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def evaluate(run: RunConfig, data_dir: str | Path, paths: RunPaths, progress: bool = True) -> dict:
    """Evaluate the run's best.pt: paths.eval (numbers: what `dvc metrics` shows) and its provenance,
    paths.routing (per-layer detail, expert specialisation), paths.samples."""
    start = time.perf_counter()
    torch.manual_seed(run.seed)
    task = build_task(run, Path(data_dir))
    task.check_data()  # every split readable before the checkpoint is loaded
    model = load_trained(run, task, paths.checkpoints)
    collector = StatsCollector(model)
    with torch.no_grad():
        metrics, samples = task.evaluate(model, collector, progress=progress)
    headline = {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
    detail = {k: metrics[k] for k in DETAIL_KEYS if k in metrics}
    write_json(paths.routing, detail)
    atomic_write_text(paths.samples, samples)
    write_metrics(paths.eval, headline, run.to_dict(), {"wall_s": time.perf_counter() - start})  # its cost: provenance
    return metrics


def headline(metrics: dict) -> dict:
    """The test-split numbers a one-line summary shows."""
    return {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}


# ---------------------------------------------------------------- `moelab evaluate`
def add_arguments(p) -> None:
    from .select import add_run_arguments

    add_run_arguments(p)
    p.add_argument(
        "--jobs", type=int, default=0, help="runs at a time, one thread each (0: all at once, the cores shared)"
    )


def run(args) -> None:
    from .parallel import run_all
    from .select import select_runs

    selection = select_runs(args)
    progress = not args.quiet and len(selection.runs) == 1
    work = [(run, selection.data_dir, paths, progress) for run, paths in selection.runs]
    run_all(evaluate_one, work, args.jobs or len(work))


def evaluate_one(run: RunConfig, data_dir: Path, paths: RunPaths, progress: bool) -> dict:
    metrics = evaluate(run, data_dir, paths, progress)
    print(f"evaluated {run.task}/{run.name}/s{run.seed}: {headline(metrics)}", flush=True)
    return headline(metrics)
