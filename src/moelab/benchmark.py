"""The benchmark stage: parameters (total/active), analytic FLOPs per token, latency, throughput, memory."""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch

from .config import BenchmarkParams, RunConfig
from .evaluate import StatsCollector
from .flops import moe_block_indices
from .io import write_metrics
from .tasks import build_task


def _timed(fn, warmup: int, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() after warm-up (device-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def parameter_counts(model, run: RunConfig, experts_per_token: list[float]) -> dict:
    """Total parameters, and active ones: those a token actually uses (k of E experts per MoE block)."""
    total = sum(p.numel() for p in model.parameters())
    per_expert = 2 * run.preset.d_model * run.preset.d_ff
    inactive = sum((run.moe.n_experts - k) * per_expert for k in experts_per_token) if run.moe else 0
    return {"params_total": total, "params_active": int(round(total - inactive))}


def benchmark(run: RunConfig, data_dir: str | Path, metrics_path: str | Path, bp: BenchmarkParams) -> dict:
    torch.manual_seed(run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = build_task(run, Path(data_dir))
    model = task.build_model().to(device)
    batch = {k: v.to(device) for k, v in task.train_batch(torch.Generator().manual_seed(0), bp.batch_size).items()}
    tokens = batch["input_ids"].numel()

    collector = StatsCollector(model)
    model.eval()
    with torch.no_grad(), collector.collecting():
        model.loss(batch)
    realised = [l["experts_per_token"] for l in collector.summary()["layers"]]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        forward_s = _timed(lambda: model.loss(batch), bp.warmup, bp.repeats, device)
    model.train()

    def train_step():
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(batch)
        (loss + model.balancing_loss()).backward()
    train_s = _timed(train_step, bp.warmup, bp.repeats, device)

    context = batch["input_ids"].shape[1]
    flops = task.flops_per_token(None, context)
    metrics = {
        **parameter_counts(model, run, realised if run.moe else []),
        "flops_per_token": flops["total"],
        "flops_per_token_realised": task.flops_per_token(realised or None, context)["total"],
        "flops_breakdown": flops,
        "moe_blocks": len(moe_block_indices(run)),
        "forward_ms": forward_s * 1e3,
        "train_step_ms": train_s * 1e3,
        "forward_tokens_per_s": tokens / forward_s,
        "train_tokens_per_s": tokens / train_s,
        "peak_memory_mib": (torch.cuda.max_memory_allocated() if device.type == "cuda"
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_tokens": tokens,
    }
    write_metrics(metrics_path, metrics, {**run.to_dict(), "benchmark": bp.__dict__})
    return metrics
