"""What a variant costs: parameters (total / active), FLOPs per token (analytic, from the realised
routing, and counted by torch's FlopCounterMode), forward and training-step latency, throughput and
peak memory. `moelab bench` runs it for every cell of the study (and the layer micro-benchmark of
layerbench.py); `moelab benchmark` for one variant.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import BenchmarkParams, Params, RunConfig
from ..cpu import malloc_tuned
from ..evaluate import StatsCollector
from ..flops import counted_flops
from ..io import write_metrics
from ..tasks import build_task


# ------------------------------------------------------------------ timing and memory
@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    repeats: int


def time_it(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> Timing:
    """Median and 90th percentile of fn()'s wall time after `warmup` untimed calls (device-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(statistics.median(times), percentile(times, 0.9), repeats)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class PeakMemory:
    """Peak memory over a block: the CUDA allocator's peak on GPU; on CPU the process's peak resident
    set (VmHWM), reset at the start of the block where Linux allows it (/proc/self/clear_refs),
    otherwise the process-lifetime peak (ru_maxrss)."""

    def __init__(self, device: torch.device):
        self.device, self.kind, self.mib = device, "", 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "process_peak_rss" if _reset_cpu_peak() else "process_lifetime_peak_rss"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_kib()
            self.mib = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        return False


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm_hwm_kib() is not None
    except OSError:
        return False


def _vm_hwm_kib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """What the timings depend on (package versions are added by write_metrics)."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned(),
    }


# ------------------------------------------------------------------ one variant
def parameter_counts(model, experts_per_token: list[float]) -> dict:
    """Total parameters, and active ones: those a token actually uses (its realised experts per MoE block)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0.0
    for layer, k in zip(model.moe_layers(), experts_per_token):
        per_expert = sum(p.numel() for p in layer.experts.parameters()) / layer.cfg.n_routed
        inactive += (layer.cfg.n_routed - k) * per_expert
    return {"params_total": total, "params_active": int(round(total - inactive))}


def measure(run: RunConfig, data_dir: str | Path, bp: BenchmarkParams) -> dict:
    """Every figure of one variant on one unpadded batch of its task's training data."""
    torch.manual_seed(run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = build_task(run, Path(data_dir))
    model = task.build_model().to(device)
    batch, tokens = task.bench_batch(torch.Generator().manual_seed(0), bp.batch_size)
    batch = {k: v.to(device) for k, v in batch.items()}

    # the realised routing of this batch (sparsemax/entmax use a varying number of experts per token)
    model.eval()
    collector = StatsCollector(model)
    with torch.no_grad(), collector.collecting():
        model.loss(batch)
    realised = [layer["experts_per_token"] for layer in collector.summary()["layers"]] or None
    analytic = task.batch_flops_per_token(batch, realised)
    with torch.no_grad():
        counted = counted_flops(lambda: model.loss(batch)) / tokens

    model.record_routing_stats(False)  # as in training: no statistics in the timed loops
    with PeakMemory(device) as peak:
        with torch.no_grad():
            forward = time_it(lambda: model.loss(batch), bp.warmup, bp.repeats, device)
        model.train()

        def train_step():
            model.zero_grad(set_to_none=True)
            loss, _ = model.loss(batch)
            (loss + model.balancing_loss()).backward()

        train = time_it(train_step, bp.warmup, bp.repeats, device)

    return {
        **parameter_counts(model, realised or []),
        "flops_per_token": task.batch_flops_per_token(batch, None)["total"],  # at k (all E for soft)
        "flops_per_token_realised": analytic["total"],
        "flops_per_token_counted": counted,
        "flops_analytic_over_counted": analytic["total"] / counted,
        "flops_breakdown": {k: v for k, v in analytic.items() if k != "total"},
        "experts_per_token": realised or [],
        "moe_blocks": len(realised or []),
        "forward_ms": forward.median_ms,
        "forward_p90_ms": forward.p90_ms,
        "train_step_ms": train.median_ms,
        "train_step_p90_ms": train.p90_ms,
        "forward_tokens_per_s": tokens / (forward.median_ms / 1e3),
        "train_tokens_per_s": tokens / (train.median_ms / 1e3),
        "peak_memory_mib": peak.mib,
        "peak_memory_kind": peak.kind,
        "batch_tokens": tokens,
        "repeats": bp.repeats,
        **environment(device, next(model.parameters()).dtype),
    }


def benchmark(run: RunConfig, data_dir: str | Path, metrics_path: str | Path, bp: BenchmarkParams) -> dict:
    metrics = measure(run, data_dir, bp)
    write_metrics(metrics_path, metrics, {**run.to_dict(), "benchmark": dataclasses.asdict(bp)})
    return metrics


# ------------------------------------------------------------------ the study
def study_runs(params: Params, tasks: list[str] | None = None) -> list[RunConfig]:
    """One run per variant of the study (moelab/study.py; seed: the first), the dense baseline included."""
    from ..study import runs, variants

    return [runs(params, v, params.seeds[:1])[0] for task in tasks or params.tasks for v in variants(params, task)]


def bench_study(
    params: Params, data_root: str | Path, out_dir: str | Path, tasks: list[str] | None = None, progress: bool = True
) -> list[dict]:
    """measure() every study variant; writes <out_dir>/<task>/<variant>.json, returns the rows."""
    from tqdm.auto import tqdm

    rows = []
    runs = study_runs(params, tasks)
    for run in tqdm(runs, desc="bench variants", disable=not progress):
        path = Path(out_dir) / run.task / f"{run.name}.json"
        metrics = benchmark(run, Path(data_root) / run.task, path, params.benchmark)
        rows.append({"task": run.task, "variant": run.name, **metrics})
    return rows


MODEL_COLUMNS = [  # (key, header, format)
    ("params_total", "params", "{:,.0f}"),
    ("params_active", "active", "{:,.0f}"),
    ("experts_per_token", "experts/token", None),
    ("flops_per_token_realised", "FLOPs/token", "{:.3g}"),
    ("attention", "attn", "{:.3g}"),
    ("router", "router", "{:.3g}"),
    ("experts", "experts", "{:.3g}"),
    ("dense_ffn", "dense FFN", "{:.3g}"),
    ("head", "head", "{:.3g}"),
    ("flops_per_token_counted", "counted", "{:.3g}"),
    ("flops_analytic_over_counted", "analytic/counted", "{:.4f}"),
    ("forward_ms", "fwd ms (p90)", None),
    ("train_step_ms", "fwd+bwd ms (p90)", None),
    ("forward_tokens_per_s", "infer tok/s", "{:,.0f}"),
    ("train_tokens_per_s", "train tok/s", "{:,.0f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
]


def model_table(rows: list[dict]) -> str:
    """Markdown table of bench_study rows, one line per task/variant."""
    head = ["task", "variant"] + [h for _, h, _ in MODEL_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], r["variant"]]
        for key, _, fmt in MODEL_COLUMNS:
            if key == "experts_per_token":
                cells.append(" / ".join(f"{k:.2f}" for k in r[key]) or "–")
            elif key in ("forward_ms", "train_step_ms"):
                cells.append(f"{r[key]:.2f} ({r[key.replace('_ms', '_p90_ms')]:.2f})")
            elif key in r:
                cells.append(fmt.format(r[key]))
            else:
                cells.append(fmt.format(r["flops_breakdown"].get(key, 0)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
