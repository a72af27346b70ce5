"""SwiGLU experts (Shazeer 2020; Mixtral, OLMoE): moe/experts/swiglu.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import SwitchTransformersConfig

from familylab import check_train_evaluate, listed
from moelab.config import ConfigError
from moelab.flops import counted_flops
from moelab.models.switch import moe_config_for
from moelab.moe import MoEConfig, MoELayer, moe_flops_per_token
from moelab.moe.experts import grouped_mm_usable
from moelab.moe.init import InitConfig

D, F_WIDTH, E = 16, 24, 4


def swiglu_layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    values = dict(d_model=D, d_ff=F_WIDTH, n_experts=E, top_k=2, expert="swiglu", aux_loss_coef=0.0, z_loss_coef=0.0)
    return MoELayer(MoEConfig.build(**{**values, **kw}))


def by_hand(layer: MoELayer, h: torch.Tensor, e: int) -> torch.Tensor:
    """(silu(h W_gate) * (h W_up)) W_down of expert e; W_gate, W_up: the two halves of w_in[e]."""
    w_gate, w_up = (
        layer.experts.w_in[e, :, : layer.cfg.expert_width],
        layer.experts.w_in[e, :, layer.cfg.expert_width :],
    )
    return (F.silu(h @ w_gate) * (h @ w_up)) @ layer.experts.w_out[e]


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-mm", "loop"])
def test_layer_output_by_hand_token_by_token(grouped):
    layer = swiglu_layer()
    layer.experts.use_grouped_mm = grouped
    x = torch.randn(2, 5, D)
    flat = x.reshape(-1, D)
    expected = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        weights = torch.softmax(layer.router.proj.weight @ flat[t], -1)
        for i in weights.topk(2).indices.tolist():
            expected[t] += weights[i] * by_hand(layer, flat[t], i)
    torch.testing.assert_close(layer(x).reshape(-1, D), expected, rtol=1e-5, atol=1e-6)


def test_grouped_matmul_and_loop_agree_in_outputs_and_gradients():
    layer = swiglu_layer(norm="sparsemax", top_k=0)
    x, grad = torch.randn(2, 12, D), torch.randn(2, 12, D)
    results = []
    for grouped in (True, False):
        layer.experts.use_grouped_mm = grouped
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        layer(xr).backward(grad)
        results.append((xr.grad, layer.experts.w_in.grad.clone(), layer.experts.w_out.grad.clone()))
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_an_unaligned_hidden_width_falls_back_to_the_loop():
    """f = 6: w_in rows (2f = 12 floats) are 16-byte aligned but the hidden rows (6 floats) are not."""
    layer = swiglu_layer(d_model=8, d_ff=6, top_k=1)
    ex = layer.experts
    assert grouped_mm_usable(torch.randn(3, 8), ex.w_in, ex.w_out) and not grouped_mm_usable(ex.w_out.mT)
    x = torch.randn(5, 8)
    counts = torch.tensor([2, 0, 3, 0])
    manual = torch.cat([torch.stack([by_hand(layer, h, e) for h in block]) for e, block in [(0, x[:2]), (2, x[2:])]])
    torch.testing.assert_close(ex(x, counts), manual, rtol=1e-5, atol=1e-6)


def test_switch_init_by_fan_in():
    layer = swiglu_layer(d_model=64, d_ff=512)
    layer.reset_parameters(InitConfig(ffn_scale=0.2))
    cut = 0.8796256610342398  # std of a standard normal cut at +-2 (scipy.stats.truncnorm(-2, 2).std())
    for w, fan_in in [(layer.experts.w_in, 64), (layer.experts.w_out, 512)]:
        assert w.double().std().item() == pytest.approx(math.sqrt(0.2 / fan_in) * cut, rel=0.02)  # >= 131072 draws


def test_flops_six_d_f_per_expert_analytic_equals_counted():
    layer = swiglu_layer()
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        grouped = counted_flops(lambda: layer(x))
        layer.experts.use_grouped_mm = False  # plain matmuls: torch's own counting formula
        with FlopCounterMode(display=False) as counter:
            layer(x)
    analytic = moe_flops_per_token(layer.cfg)
    assert analytic["experts"] == 2 * 6 * D * F_WIDTH
    assert counter.get_total_flops() == grouped == 12 * (analytic["router"] + analytic["experts"])


def test_listed_checked_trained_and_evaluated_in_the_lm(capsys, tmp_path, prepared):
    assert "swiglu" in listed(capsys, "expert")
    evaluation, bench = check_train_evaluate(tmp_path, prepared("lm"), "lm", "swiglu-top2")
    assert evaluation["experts_per_token"] == pytest.approx(2.0)
    # e8 (d 64, d_ff 128, 8 experts, 2 layers): 6 of 8 experts, 3 x 64 x 128 weights each, inactive per layer
    assert bench["params_active"] == bench["params_total"] - 2 * 6 * 3 * 64 * 128


def test_a_pretrained_switch_checkpoint_refuses_swiglu_experts():
    """Its experts are ReLU/GELU mlps: their weights cannot be copied into SwiGLU experts."""
    hf = SwitchTransformersConfig(d_model=D, d_ff=F_WIDTH, num_experts=E)
    with pytest.raises(ConfigError, match="expert: mlp"):
        moe_config_for(hf, MoEConfig.build(d_model=D, d_ff=F_WIDTH, n_experts=E, expert="swiglu"))
