"""Sigmoid gating with top-k and aux-loss-free bias balancing (DeepSeek-V3; moe/normalisers/sigmoid.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from familylab import check_train_evaluate, listed
from moelab.moe import MoEConfig, MoELayer, OptionError, moe_flops_per_token

E, D = 5, 12


def sigmoid_layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    values = dict(d_model=D, d_ff=16, n_experts=E, norm="sigmoid", top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0)
    return MoELayer(MoEConfig.build(**{**values, **kw}))


def test_layer_output_by_hand_token_by_token_with_a_selection_bias():
    """s = sigmoid(h W_r); top-2 of s + b; g = s / sum of the selected s (b never enters g)."""
    layer = sigmoid_layer(bias_update_rate=0.01)
    bias = torch.tensor([0.0, 0.3, -0.2, 0.1, 0.0])
    layer.balancing["selection_bias"].bias.copy_(bias)
    x = torch.randn(3, 4, D)
    flat = x.reshape(-1, D)
    ex = layer.experts
    expected = torch.zeros_like(flat)
    changed_by_bias = 0
    for t in range(flat.shape[0]):
        s = torch.sigmoid(layer.router.proj.weight @ flat[t])  # [E]
        chosen = (s + bias).topk(2).indices.tolist()
        changed_by_bias += set(chosen) != set(s.topk(2).indices.tolist())
        for i in chosen:
            expected[t] += s[i] / s[chosen].sum() * (F.gelu(flat[t] @ ex.w_in[i]) @ ex.w_out[i])
    torch.testing.assert_close(layer(x).reshape(-1, D), expected, rtol=1e-5, atol=1e-6)
    assert changed_by_bias > 0, "the bias must change some token's choice in this example"


def test_aux_loss_and_entropy_read_affinities_normalised_over_all_experts():
    """DeepSeek-V3's balance loss: P_i = mean over tokens of s_i / sum_j s_j; f_i = share of selected
    slots; loss = coef * E * sum_i f_i P_i. The routing entropy is that of the same shares."""
    layer = sigmoid_layer(aux_loss_coef=0.5)
    x = torch.randn(1, 9, D)
    layer(x)
    s = torch.sigmoid(x[0] @ layer.router.proj.weight.t())  # [N, E]
    shares = s / s.sum(-1, keepdim=True)
    chosen = s.topk(2, -1).indices.reshape(-1)
    f = torch.bincount(chosen, minlength=E).float() / chosen.numel()
    assert layer.balancing_loss.item() == pytest.approx(0.5 * E * (f * shares.mean(0)).sum().item(), rel=1e-6)
    entropy = -(shares * shares.log()).sum().item()
    assert layer.last_stats.entropy_sum == pytest.approx(entropy, rel=1e-5)
    assert 0 < layer.last_stats.summary()["routing_entropy"] <= math.log(E)


def test_soft_routing_is_refused():
    with pytest.raises(OptionError) as err:
        MoEConfig.build(d_model=8, d_ff=8, n_experts=4, norm="sigmoid", top_k=0).validate()
    assert err.value.key == "top_k"


def test_flops_analytic_equals_counted():
    layer = sigmoid_layer()
    layer.experts.use_grouped_mm = False  # plain matmuls: torch's own counting formula
    x = torch.randn(2, 7, D)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    analytic = moe_flops_per_token(layer.cfg)
    assert counter.get_total_flops() == 14 * (analytic["router"] + analytic["experts"])
    assert analytic["experts"] == 2 * 4 * D * 16


def test_listed_checked_trained_and_evaluated_in_the_lm(capsys, tmp_path, prepared):
    assert "sigmoid" in listed(capsys, "norm")
    evaluation, _ = check_train_evaluate(tmp_path, prepared("lm"), "lm", "sigmoid-top2-bias")
    assert evaluation["experts_per_token"] == pytest.approx(2.0)
    assert 0 < evaluation["routing_entropy"] <= math.log(8)
