"""Initialisation: an MoE layer starts from the same distribution as the dense FFN it is compared with.

Switch init (moe/init.py): truncated normal, cut at +-2 std, std = sqrt(scale / fan_in) before the cut.
The cut shrinks the std by truncnorm(-2, 2).std() (scipy: the independent reference). A sample variance
s^2 of n iid draws has relative standard deviation sqrt((kurtosis - 1) / n), so every std check below
allows Z of those (kurtosis of the truncated normal from scipy too).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.stats import truncnorm

from moelab.models.blocks import DenseFFN
from moelab.models.classifier import EncoderClassifier
from moelab.models.lm import DecoderLM
from moelab.models.switch import SwitchSeq2Seq
from moelab.moe import MoEConfig, MoELayer
from moelab.moe.init import InitConfig, switch_init_
from moelab.resolve import load_params, resolve_run

ROOT = Path(__file__).resolve().parents[1]
CUT = truncnorm(-2, 2)
STD_FACTOR = float(CUT.std())  # std of a standard normal cut at +-2 (~0.8796)
KURTOSIS = 3.0 + float(CUT.stats(moments="k"))  # its (non-excess) kurtosis (~2.37)
Z = 5.0  # allowed deviation in standard errors of s^2 (two-sided p ~ 6e-7 per check)
FFN_SCALE, ROUTER_SCALE = 0.37, 0.23  # not the defaults: the configured scale must reach every weight


def expected_std(scale: float, fan_in: int) -> float:
    return math.sqrt(scale / fan_in) * STD_FACTOR


def variance_tolerance(n: int) -> float:
    """Z standard errors of s^2 / sigma^2 for n draws."""
    return Z * math.sqrt((KURTOSIS - 1) / n)


def assert_switch_init(weight: torch.Tensor, scale: float, fan_in: int, what: str) -> None:
    """std(weight) == sqrt(scale / fan_in) * cut factor within sampling error; nothing beyond the cut."""
    w = weight.detach().double()
    std = expected_std(scale, fan_in)
    ratio = w.var(unbiased=False).item() / std**2
    assert abs(ratio - 1) < variance_tolerance(w.numel()), f"{what}: var / expected = {ratio:.4f} (n = {w.numel()})"
    assert w.abs().max().item() <= 2 * math.sqrt(scale / fan_in) * (1 + 1e-6), f"{what}: a value beyond the cut"


def assert_same_std(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Two independent samples of the same distribution: the variance ratio is 1 within sampling error."""
    ratio = a.detach().double().var().item() / b.detach().double().var().item()
    n = min(a.numel(), b.numel())
    assert abs(ratio - 1) < Z * math.sqrt(2 * (KURTOSIS - 1) / n), f"{what}: variance ratio {ratio:.4f}"


# ------------------------------------------------------------------ one expert, top-1 softmax = the dense FFN
@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-mm", "loop"])
def test_one_expert_top1_softmax_computes_the_dense_ffn(activation, grouped):
    """softmax over one expert is exactly 1.0, every token takes the one expert, and the expert holds
    the dense FFN's weights: the outputs are bit-identical (same matmuls, weight 1.0, one addend)."""
    torch.manual_seed(0)
    d, f = 32, 64
    dense = DenseFFN(d, f, activation)
    moe = MoELayer(
        MoEConfig.build(
            d_model=d, d_ff=f, n_experts=1, top_k=1, norm="softmax", activation=activation, aux_loss_coef=0.0
        )
    )
    moe.experts.use_grouped_mm = grouped
    with torch.no_grad():
        moe.experts.w_in[0].copy_(dense.w_in.weight.t())  # nn.Linear stores [out, in]
        moe.experts.w_out[0].copy_(dense.w_out.weight.t())
    x = torch.randn(3, 17, d)
    with torch.no_grad():
        ours, reference = moe(x), dense(x)
    assert moe.last_stats.tokens == moe.last_stats.slots_selected == 51 and moe.last_stats.slots_dropped == 0
    assert torch.equal(ours, reference), f"max |moe - dense| = {(ours - reference).abs().max().item():.3g}"


# ------------------------------------------------------------------ the init rule
def test_switch_init_std_is_sqrt_scale_over_fan_in_times_the_cut_factor():
    torch.manual_seed(0)
    for scale, fan_in in [(0.1, 64), (1.0, 512), (FFN_SCALE, 3)]:
        w = switch_init_(torch.empty(400, 300), scale, fan_in)
        assert_switch_init(w, scale, fan_in, f"scale {scale}, fan_in {fan_in}")
        assert abs(w.double().mean().item()) < Z * expected_std(scale, fan_in) / math.sqrt(w.numel())


def test_a_dense_ffn_and_each_expert_of_the_same_shape_start_alike():
    init = InitConfig(ffn_scale=FFN_SCALE, router_scale=ROUTER_SCALE)
    d, f, e = 64, 128, 4
    torch.manual_seed(0)
    dense = DenseFFN(d, f)
    dense.reset_parameters(init)
    torch.manual_seed(0)
    moe = MoELayer(MoEConfig.build(d_model=d, d_ff=f, n_experts=e, top_k=2))
    moe.reset_parameters(init)
    assert_switch_init(dense.w_in.weight, FFN_SCALE, d, "dense w_in")
    assert_switch_init(dense.w_out.weight, FFN_SCALE, f, "dense w_out")
    for i in range(e):
        assert_switch_init(moe.experts.w_in[i], FFN_SCALE, d, f"expert {i} w_in")
        assert_switch_init(moe.experts.w_out[i], FFN_SCALE, f, f"expert {i} w_out")
        assert_same_std(moe.experts.w_in[i], dense.w_in.weight, f"expert {i} vs dense w_in")
        assert_same_std(moe.experts.w_out[i], dense.w_out.weight, f"expert {i} vs dense w_out")
    assert_switch_init(moe.router.proj.weight, ROUTER_SCALE, d, "router")


# ------------------------------------------------------------------ inside the real models
def ffn_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """(name, weight, fan_in) of every FFN matrix: moelab DenseFFNs, HF Switch dense FFNs, each expert."""
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersDenseActDense

    out = []
    for name, m in model.named_modules():
        if isinstance(m, DenseFFN):
            out += [(f"{name}.w_in", m.w_in.weight, m.w_in.in_features)]
            out += [(f"{name}.w_out", m.w_out.weight, m.w_out.in_features)]
        elif isinstance(m, SwitchTransformersDenseActDense):  # wi.weight [f, d], wo.weight [d, f]
            out += [
                (f"{name}.wi", m.wi.weight, m.wi.weight.shape[1]),
                (f"{name}.wo", m.wo.weight, m.wo.weight.shape[1]),
            ]
        elif isinstance(m, MoELayer):
            for e in range(m.cfg.n_routed):
                out += [(f"{name}.expert{e}.w_in", m.experts.w_in[e], m.cfg.d_model)]
                out += [(f"{name}.expert{e}.w_out", m.experts.w_out[e], m.cfg.expert_width)]
    return out


def router_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    return [
        (f"{name}.router.{pname}", p, p.shape[-1])
        for name, m in model.named_modules()
        if isinstance(m, MoELayer)
        for pname, p in m.router.named_parameters()
    ]


def build(task: str, params, **kw) -> torch.nn.Module:
    run = resolve_run(params, task=task, **kw)
    torch.manual_seed(0)
    if task == "lm":
        return DecoderLM(97, 16, run.model)
    if task == "classification":
        return EncoderClassifier(97, 16, 3, run.model)
    return SwitchSeq2Seq(run.model, 97, max_target_len=8)


@pytest.fixture(scope="module")
def init_params(tmp_path_factory):
    """The repo's params with non-default init scales, MoE in every 2nd of 2 blocks (a dense FFN of
    the expert's width beside the MoE layer) and a dense baseline of the same width (dense.top_k 1)."""
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["init"].update(ffn_scale=FFN_SCALE, router_scale=ROUTER_SCALE)
    data["dense"]["top_k"] = 1
    for task in ("lm", "classification", "summarization"):
        data[task]["models"]["e8"].update(n_layers=2, moe_every=2)
    path = tmp_path_factory.mktemp("init") / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_params(path)


@pytest.mark.parametrize("task", ["lm", "classification", "summarization"])
@pytest.mark.parametrize("router", ["linear", "attention"])
def test_every_ffn_and_router_of_a_model_follows_the_switch_init(init_params, task, router):
    """MoE model: its dense FFN (block 0) and each expert (block 1) have the same shape and start
    alike; every FFN matrix and router weight has std sqrt(scale / fan_in) x cut factor. The dense
    baseline's FFNs (same width, top_k 1) start like the experts too. Summarisation: HF's dense FFNs
    of the from-scratch Switch and moelab's experts, encoder and decoder."""
    moe_model = build(task, init_params, router=router, gate="softmax-top2", model="e8")
    dense_model = build(task, init_params, dense=True)
    moe_ffns, dense_ffns = ffn_weights(moe_model), ffn_weights(dense_model)
    n_moe_layers = 2 if task == "summarization" else 1  # encoder + decoder
    assert len([n for n, _, _ in moe_ffns if ".expert" in n]) == n_moe_layers * 8 * 2
    assert len(dense_ffns) == (8 if task == "summarization" else 4), [n for n, _, _ in dense_ffns]
    for name, weight, fan_in in moe_ffns + dense_ffns:
        assert_switch_init(weight, FFN_SCALE, fan_in, name)
    for name, weight, fan_in in router_weights(moe_model):
        if name.endswith("expert_embeddings"):  # set by the logit-scale rule (test below), not the Switch init
            continue
        assert_switch_init(weight, ROUTER_SCALE, fan_in, name)
    experts_in = torch.cat([w.reshape(-1) for n, w, _ in moe_ffns if n.endswith("w_in")])
    experts_out = torch.cat([w.reshape(-1) for n, w, _ in moe_ffns if n.endswith("w_out")])
    for name, weight, _ in moe_ffns + dense_ffns:
        if ".expert" not in name:  # a dense FFN matrix vs the experts' of the same role and shape
            same_role = experts_in if name.endswith(("w_in", "wi")) else experts_out
            assert_same_std(weight, same_role, f"{name} vs experts")


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("d_model, n_experts", [(64, 16), (256, 8)])
def test_a_fresh_attention_router_starts_at_the_linear_routers_logit_scale(scaled, d_model, n_experts):
    """Same init.router_scale, same tokens (unit variance, as after a LayerNorm): the attention router's fresh
    scores have the linear router's variance (router_scale x cut factor^2), scaled by 1/sqrt(d) or not, so
    that comparing router forms does not compare starting scales. Before this rule the scaled form started
    ~30x smaller at d 64. Tolerance: the scores' variance over many tokens and 50 fresh routers."""
    from types import SimpleNamespace

    from moelab.moe.routers.attention import AttentionRouter
    from moelab.moe.routers.linear import LinearRouter

    cfg = SimpleNamespace(d_model=d_model, n_routed=n_experts, attention_scaled=scaled)
    init = InitConfig(router_scale=ROUTER_SCALE)
    h = torch.randn(2048, d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = ROUTER_SCALE * STD_FACTOR**2  # var of a fresh linear router's logit on unit-variance tokens
    torch.manual_seed(0)
    variances = {}
    for name, router_cls in (("linear", LinearRouter), ("attention", AttentionRouter)):
        values = []
        for _ in range(50):  # the variance over fresh routers: one router's scores share its weights
            router = router_cls(cfg).double()
            router.reset_parameters(init)
            with torch.no_grad():
                values.append(router(h).var().item())
        variances[name] = sum(values) / len(values)
    assert variances["linear"] == pytest.approx(expected, rel=0.1)
    assert variances["attention"] == pytest.approx(expected, rel=0.15), variances
