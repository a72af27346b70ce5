"""Layer micro-benchmark: one MoE layer against the same work done other ways, on the same input.

For each token count and k it times, forward and forward + backward:
  dense      a dense FFN of width k * d_ff: the FLOPs the MoE layer spends per token (its active FLOPs,
             less the router's 2 d E, 0.4 % of them at the default sizes)
  moelab     moelab's MoELayer (linear router, softmax, top-k; expert-sorted grouped matmuls)
  naive      the same weights and routing run the way the reference codes do it: a Python loop over
             experts, each gathering its tokens with a boolean mask and adding its output back
  hf-switch  transformers' SwitchTransformersSparseMLP (top-1 only; moelab gets the same weights)
and reports each as a ratio to the dense FFN of the same k. Before timing, every implementation's
output is checked against moelab's (same weights), so a ratio never compares different functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import LayerBenchParams
from ..models.blocks import DenseFFN
from ..moe import MoEConfig, MoELayer
from .models import environment, time_it

NO_LOSSES = {"aux_loss_coef": 0.0, "z_loss_coef": 0.0}  # the contenders compute no balancing loss either


class NaiveLoopMoE(nn.Module):
    """The per-expert Python loop of the reference codes, on a MoELayer's weights (top-k of softmax)."""

    def __init__(self, moe: MoELayer):
        super().__init__()
        self.moe, self.k = moe, moe.cfg.top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])  # [N, d]
        weights = torch.softmax(self.moe.router(h), dim=-1)  # [N, E]
        top_w, top_e = weights.topk(self.k, dim=-1)  # [N, k]
        out = torch.zeros_like(h)
        experts = self.moe.experts
        for e in range(experts.w_in.shape[0]):
            token, slot = (top_e == e).nonzero(as_tuple=True)  # this expert's tokens
            if token.numel():
                y = experts.act(h[token] @ experts.w_in[e]) @ experts.w_out[e]
                out = out.index_add(0, token, y * top_w[token, slot].unsqueeze(-1))
        return out.reshape(x.shape)


def hf_switch_layer(d_model: int, d_ff: int, n_experts: int, tokens: int) -> nn.Module:
    """A SwitchTransformersSparseMLP with room for every token (no capacity drops) and no jitter."""
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    cfg = SwitchTransformersConfig(
        d_model=d_model,
        d_ff=d_ff,
        num_experts=n_experts,
        expert_capacity=tokens,
        router_jitter_noise=0.0,
        dropout_rate=0.0,
        dense_act_fn="gelu",
        router_bias=False,
    )
    return SwitchTransformersSparseMLP(cfg)


@dataclass
class Contender:
    name: str
    module: nn.Module
    top_k: int


def contenders(lb: LayerBenchParams, tokens: int, k: int, dtype: torch.dtype, device) -> list[Contender]:
    """dense / moelab / naive (and hf-switch at k = 1), sharing weights where they share a function."""
    if k == 1:
        from ..models.switch import wrap_sparse_mlp

        hf = hf_switch_layer(lb.d_model, lb.d_ff, lb.n_experts, tokens)
        cfg = MoEConfig(lb.d_model, lb.d_ff, lb.n_experts, top_k=1, activation="gelu", options=NO_LOSSES)
        moe = wrap_sparse_mlp(hf, cfg).moe
    else:
        hf, moe = (
            None,
            MoELayer(MoEConfig(lb.d_model, lb.d_ff, lb.n_experts, top_k=k, activation="gelu", options=NO_LOSSES)),
        )
    moe.record_stats = False
    out = [
        Contender("dense", DenseFFN(lb.d_model, k * lb.d_ff, "gelu"), k),
        Contender("moelab", moe, k),
        Contender("naive", NaiveLoopMoE(moe), k),
    ]
    if hf is not None:
        out.append(Contender("hf-switch", hf, k))
    for c in out:
        c.module.to(device=device, dtype=dtype)
    return out


def check_same_function(cs: list[Contender], x: torch.Tensor) -> dict:
    """max |output - moelab's output| of each MoE contender (same weights, same routing)."""
    with torch.no_grad():
        ref = cs[1].module(x).float()
        return {c.name: float((c.module(x).float() - ref).abs().max()) for c in cs[2:]}


def run_layer_bench(lb: LayerBenchParams, device: torch.device | None = None, progress: bool = True) -> dict:
    """Rows of {tokens, top_k, impl, fwd/fwd+bwd median & p90 ms, ratios to dense, TFLOP/s}."""
    from tqdm.auto import tqdm

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        lb.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    ks = [lb.top_k] + ([1] if lb.top_k != 1 else [])
    rows, checks = [], []
    cases = [(n, k) for n in lb.tokens for k in ks]
    for n, k in tqdm(cases, desc="layer bench", disable=not progress):
        torch.manual_seed(0)
        cs = contenders(lb, n, k, dtype, device)
        x = torch.randn(1, n, lb.d_model, device=device, dtype=dtype)
        checks.append({"tokens": n, "top_k": k, "max_abs_diff": check_same_function(cs, x)})
        grad = torch.randn_like(x)
        flops_fwd = n * (k * 4 * lb.d_model * lb.d_ff)  # expert / dense FFN matmuls, forward
        case = []
        for c in cs:
            fwd, fb = _time_contender(c.module, x, grad, lb, device)
            case.append(
                {
                    "tokens": n,
                    "top_k": k,
                    "impl": c.name,
                    "fwd_ms": fwd.median_ms,
                    "fwd_p90_ms": fwd.p90_ms,
                    "fwd_bwd_ms": fb.median_ms,
                    "fwd_bwd_p90_ms": fb.p90_ms,
                    "fwd_tflops": flops_fwd / fwd.median_ms / 1e9,
                    "fwd_bwd_tflops": 3 * flops_fwd / fb.median_ms / 1e9,
                }
            )
        dense = case[0]
        for r in case:
            r["fwd_ratio"] = r["fwd_ms"] / dense["fwd_ms"]
            r["fwd_bwd_ratio"] = r["fwd_bwd_ms"] / dense["fwd_bwd_ms"]
        rows += case
    return {
        "rows": rows,
        "checks": checks,
        "targets": targets(rows),
        "config": {**lb.__dict__, "tokens": list(lb.tokens)},
        **environment(device, dtype),
    }


def _time_contender(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, lb: LayerBenchParams, device):
    module.train()
    with torch.no_grad():
        fwd = time_it(lambda: module(x), lb.warmup, lb.repeats, device)
    x_req = x.detach().clone().requires_grad_(True)

    def fwd_bwd():
        x_req.grad = None
        module.zero_grad(set_to_none=True)
        module(x_req).backward(grad)

    return fwd, time_it(fwd_bwd, lb.warmup, lb.repeats, device)


def targets(rows: list[dict]) -> list[dict]:
    """The targets (issue 12, item 8), measured: moelab fwd+bwd / dense of equal active FLOPs <= 1.08
    from 16k tokens and <= 1.4 below; moelab top-1 at least 1.5x (16k tokens) / 2x (below) as fast as
    hf-switch with the same weights."""
    out = []
    tokens = sorted({r["tokens"] for r in rows})
    by = {(r["tokens"], r["top_k"], r["impl"]): r for r in rows}
    top_k = max(r["top_k"] for r in rows)
    for n in tokens:
        large = n >= 16384  # the targets are set at 16k and at 512 tokens
        bound, min_speedup = (1.08, 1.5) if large else (1.4, 2.0)
        ratio = by[(n, top_k, "moelab")]["fwd_bwd_ratio"]
        out.append(
            {
                "target": f"moelab fwd+bwd / dense, top-{top_k}, {n} tokens <= {bound}",
                "value": ratio,
                "met": ratio <= bound,
            }
        )
        if (n, 1, "hf-switch") in by:
            speedup = by[(n, 1, "hf-switch")]["fwd_bwd_ms"] / by[(n, 1, "moelab")]["fwd_bwd_ms"]
            out.append(
                {
                    "target": f"moelab speed-up over hf-switch (top-1, fwd+bwd), {n} tokens >= {min_speedup}",
                    "value": speedup,
                    "met": speedup >= min_speedup,
                }
            )
    return out


def layer_table(result: dict) -> str:
    lines = [
        "| tokens | k | layer | fwd ms (p90) | fwd+bwd ms (p90) | fwd / dense | fwd+bwd / dense | fwd+bwd TFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tokens']} | {r['top_k']} | {r['impl']} | {r['fwd_ms']:.2f} ({r['fwd_p90_ms']:.2f}) | "
            f"{r['fwd_bwd_ms']:.2f} ({r['fwd_bwd_p90_ms']:.2f}) | {r['fwd_ratio']:.3f} | "
            f"{r['fwd_bwd_ratio']:.3f} | {r['fwd_bwd_tflops']:.3f} |"
        )
    lines.append("")
    for t in result["targets"]:
        lines.append(f"- {t['target']}: {t['value']:.3f} ({'met' if t['met'] else 'NOT met'})")
    for c in result["checks"]:
        diffs = ", ".join(f"{name} {v:.2e}" for name, v in c["max_abs_diff"].items())
        lines.append(f"- same function, {c['tokens']} tokens, top-{c['top_k']}: max |output - moelab| = {diffs}")
    return "\n".join(lines)


def layer_summary_metrics(result: dict) -> dict:
    """Flat headline numbers for `dvc metrics diff`: the fwd+bwd ratio of every impl and token count."""
    return {
        f"{r['impl']}_top{r['top_k']}_{r['tokens']}_fwd_bwd_ratio": r["fwd_bwd_ratio"]
        for r in result["rows"]
        if r["impl"] != "dense"
    }
