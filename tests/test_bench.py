"""The fast expert path (grouped matmul), its FLOP formula, and the benchmarks' measuring code."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moelab.bench.layer import NaiveLoopMoE, layer_table, run_layer_bench
from moelab.bench.models import PeakMemory, percentile, time_it
from moelab.config import LayerBenchParams
from moelab.flops import counted_flops
from moelab.moe import MoEConfig, MoELayer
from moelab.moe.experts import grouped_mm_usable
from moelab.moe.experts.mlp import GroupedExperts


def _config(**kw) -> MoEConfig:
    return MoEConfig.build(
        **{
            "d_model": 16,
            "d_ff": 32,
            "n_experts": 4,
            "top_k": 2,
            "aux_loss_coef": 0.0,
            "z_loss_coef": 0.0,
            "capacity_policy": "weight",
            **kw,
        }
    )


def _layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(_config(**kw))


def _fwd_bwd(layer, x, grad):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(grad)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm, top_k, cf", [("softmax", 2, 0.0), ("sparsemax", 0, 0.0), ("softmax", 1, 0.5)])
def test_grouped_matmul_path_equals_the_per_expert_loop(norm, top_k, cf):
    """Outputs and every gradient of the grouped-matmul path match the loop of plain matmuls, with
    variable experts per token (sparsemax) and capacity drops."""
    layer = _layer(norm=norm, top_k=top_k, capacity_factor=cf)
    x, grad = torch.randn(2, 24, 16), torch.randn(2, 24, 16)
    assert grouped_mm_usable(x, layer.experts.w_in, layer.experts.w_out)
    fast = _fwd_bwd(layer, x, grad)
    layer.experts.use_grouped_mm = False
    slow = _fwd_bwd(layer, x, grad)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    assert fast[2].keys() == slow[2].keys() and "experts.w_in" in fast[2]
    for name in fast[2]:
        torch.testing.assert_close(fast[2][name], slow[2][name], rtol=1e-5, atol=1e-6, msg=name)


def test_an_expert_without_tokens_gets_a_zero_gradient_on_both_paths():
    torch.manual_seed(0)
    experts = GroupedExperts(_config(n_experts=4, d_model=16, d_ff=32))
    x, grad, counts = torch.randn(16, 16), torch.randn(16, 16), torch.tensor([5, 0, 7, 4])
    results = []
    for grouped in (True, False):
        experts.use_grouped_mm = grouped
        experts.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        out = experts(xr, counts)
        out.backward(grad)
        results.append((out.detach(), xr.grad, experts.w_in.grad.clone(), experts.w_out.grad.clone()))
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert results[0][2][1].abs().max() == 0 and results[0][3][1].abs().max() == 0


def test_unaligned_widths_fall_back_to_the_loop():
    """grouped_mm needs 16-byte row strides; d_ff = 6 (24 bytes) must still work, through the loop."""
    experts = GroupedExperts(_config(n_experts=3, d_model=8, d_ff=6, top_k=1))
    x = torch.randn(5, 8)
    assert not grouped_mm_usable(x, experts.w_in, experts.w_out)
    counts = torch.tensor([2, 0, 3])
    out = experts(x, counts)
    manual = torch.cat(
        [
            experts.act(x[:2] @ experts.w_in[0]) @ experts.w_out[0],
            experts.act(x[2:] @ experts.w_in[2]) @ experts.w_out[2],
        ]
    )
    torch.testing.assert_close(out, manual)


def test_grouped_mm_flop_formula_matches_counted_plain_matmuls():
    """The FLOPs moelab registers for aten._grouped_mm (forward and backward) equal what torch's own
    mm formula counts when the same layer runs as a loop of plain matmuls."""
    layer = _layer(norm="sparsemax", top_k=0)
    x = torch.randn(2, 24, 16, requires_grad=True)

    def fwd_bwd():
        layer(x).sum().backward()

    grouped = counted_flops(fwd_bwd)
    layer.experts.use_grouped_mm = False
    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    assert grouped == counter.get_total_flops() > 0
    slots = layer.last_stats.slots_selected  # sparsemax: a varying number of experts per token
    forward = 2 * 48 * 16 * 4 + slots * 2 * (2 * 16 * 32)  # router [48 x 16 x 4] + two matmuls per slot
    assert grouped == 3 * forward  # backward: input and weight gradient of every matmul


def test_layer_compiles_with_torch_compile():
    """torch.compile (dynamo + AOT autograd) runs the layer, forward and backward, to the eager result."""
    layer = _layer()
    x, grad = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    eager = _fwd_bwd(layer, x, grad)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")
    got = _fwd_bwd(compiled, x, grad)
    torch.testing.assert_close(got[0], eager[0])
    torch.testing.assert_close(got[1], eager[1])


def test_autocast_runs_the_experts_in_bfloat16():
    layer = _layer()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        ref = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x)
    assert low.dtype == torch.float32  # the layer returns its input's dtype
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.05)
    assert not torch.equal(low, ref), "the expert matmuls must actually have run in bf16"


def test_naive_loop_is_the_same_function():
    layer = _layer()
    x = torch.randn(1, 40, 16)
    with torch.no_grad():
        torch.testing.assert_close(NaiveLoopMoE(layer)(x), layer(x), rtol=1e-5, atol=1e-6)


def test_percentile_matches_numpy_and_timing_reports_median_and_p90():
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    for q in (0.0, 0.5, 0.9, 1.0):
        assert percentile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    calls = []
    t = time_it(lambda: calls.append(1), warmup=2, repeats=10, device=torch.device("cpu"))
    assert len(calls) == 12 and t.repeats == 10 and 0 <= t.median_ms <= t.p90_ms


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as small:
        torch.zeros(10).sum()
    # 1.25 GiB: above the 1 GiB mmap threshold moelab.cpu sets, so it is a fresh mapping whether or not
    # an earlier test (any CLI call) turned heap reuse on; a smaller block may reuse retained heap pages
    with PeakMemory(torch.device("cpu")) as big:
        torch.ones(1280 * 2**20 // 4).sum()
    assert big.mib > 0 and small.kind.endswith("peak_rss")
    if small.kind == "process_peak_rss":  # the peak was reset between the two blocks
        assert big.mib - small.mib > 1024


def test_layer_bench_rows_ratios_and_same_function_checks():
    lb = LayerBenchParams(tokens=[32], d_model=16, d_ff=32, n_experts=4, top_k=2, warmup=1, repeats=10)
    result = run_layer_bench(lb, progress=False)
    impls = {(r["top_k"], r["impl"]) for r in result["rows"]}
    assert impls == {
        (2, "dense"),
        (2, "moelab"),
        (2, "naive"),
        (1, "dense"),
        (1, "moelab"),
        (1, "naive"),
        (1, "hf-switch"),
    }
    for r in result["rows"]:
        assert r["fwd_bwd_ms"] > 0 and r["fwd_bwd_p90_ms"] >= r["fwd_bwd_ms"]
        if r["impl"] == "dense":
            assert r["fwd_ratio"] == 1.0 and r["fwd_bwd_ratio"] == 1.0
    for check in result["checks"]:
        assert all(diff < 1e-5 for diff in check["max_abs_diff"].values()), check
    assert {c["top_k"] for c in result["checks"]} == {1, 2} and "hf-switch" in result["checks"][1]["max_abs_diff"]
    assert len(result["targets"]) == 2 and result["dtype"] == "float32"
    assert "| 32 | 1 | hf-switch |" in layer_table(result)
