"""Where the MoE layer's time goes at small batches, and the floor any expert-parallel layer has here.

For each token count and k of params.yaml `benchmark.layer` (default: the smallest count), on the
same input as the layer micro-benchmark (src/moelab/bench/layer.py):

  dense        the dense FFN of equal active FLOPs (the micro-benchmark's denominator)
  moelab       moelab's MoE layer, fwd+bwd
  experts only the layer's two grouped expert matmuls (+ activation) alone, fwd+bwd, on the blocks
               its own routing made: no router, no sort, no gather/scatter. No implementation that
               runs each expert on its own tokens (HF's Switch layer included) can go below it.

and the share of the layer's fwd+bwd spent in matmul kernels (torch.profiler, aten::mm).

    python scripts/layer_floor.py                 # 512 tokens: about 20 s on 2 CPU cores
    python scripts/layer_floor.py --tokens 16384  # about a minute

Time only on a quiet machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from moelab.bench.layer import contenders
from moelab.bench.models import time_it
from moelab.config import load_params
from moelab.cpu import keep_freed_memory


def expert_blocks(moe, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert-sorted slot inputs [S, d] and tokens per expert [E] of the layer's routing of x."""
    with torch.no_grad():
        h = x.reshape(-1, x.shape[-1])
        slots = moe.selection(moe.normaliser(moe.router(h)), None, None)
        order = slots.expert.argsort(stable=True)
        return h[slots.token[order]].clone(), torch.bincount(slots.expert, minlength=moe.cfg.n_routed)


def experts_only(moe, sorted_x: torch.Tensor, tokens_per_expert: torch.Tensor):
    """fwd+bwd of the two grouped matmuls alone (the layer's weights, its activation)."""
    experts = moe.experts
    ends = torch.cumsum(tokens_per_expert, 0).to(torch.int32)
    x = sorted_x.detach().requires_grad_(True)
    grad = torch.randn_like(sorted_x)

    def step():
        x.grad = None
        experts.zero_grad(set_to_none=True)
        hidden = experts.act(F.grouped_mm(x, experts.w_in, offs=ends))
        F.grouped_mm(hidden, experts.w_out, offs=ends).backward(grad)

    return step


def fwd_bwd(module, x: torch.Tensor):
    x_req, grad = x.detach().clone().requires_grad_(True), torch.randn_like(x)

    def step():
        x_req.grad = None
        module.zero_grad(set_to_none=True)
        module(x_req).backward(grad)

    return step


def matmul_share(step) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / total


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokens", type=int, nargs="*", help="token counts (default: the smallest of benchmark.layer)")
    args = ap.parse_args(argv)
    keep_freed_memory()  # as every moelab command does
    lb = load_params(args.params).benchmark.layer
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; d {lb.d_model}, "
        f"d_ff {lb.d_ff}, {lb.n_experts} experts; fwd+bwd median of {lb.repeats}"
    )
    print(
        "| tokens | k | dense ms | moelab ms | experts only ms | moelab / dense | experts only / dense "
        "| matmul share of moelab |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.tokens or [min(lb.tokens)]:
        for k in sorted({lb.top_k, 1}, reverse=True):
            torch.manual_seed(0)
            dense, moelab_layer = (c.module for c in contenders(lb, n, k, torch.float32, torch.device("cpu"))[:2])
            x = torch.randn(1, n, lb.d_model)
            steps = {
                "dense": fwd_bwd(dense, x),
                "moelab": fwd_bwd(moelab_layer, x),
                "experts": experts_only(moelab_layer, *expert_blocks(moelab_layer, x)),
            }
            ms = {
                name: time_it(step, lb.warmup, lb.repeats, torch.device("cpu")).median_ms
                for name, step in steps.items()
            }
            share = matmul_share(steps["moelab"])
            print(
                f"| {n} | {k} | {ms['dense']:.2f} | {ms['moelab']:.2f} | {ms['experts']:.2f} | "
                f"{ms['moelab'] / ms['dense']:.3f} | {ms['experts'] / ms['dense']:.3f} | {share:.1%} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
