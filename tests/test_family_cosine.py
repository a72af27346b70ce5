"""Cosine router (X-MoE): scores = cos(W_p h, e_i) / tau, tau learned (moe/routers/cosine.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from familylab import check_train_evaluate, listed, listed_options
from moelab.moe import MoEConfig, MoELayer, OptionError, moe_flops_per_token


def cosine_layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    values = dict(d_model=24, d_ff=32, n_experts=6, router="cosine", top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0)
    return MoELayer(MoEConfig.build(**{**values, **kw}))


def test_scores_by_hand_token_by_token():
    layer = cosine_layer(cosine_dim=5, cosine_temperature=0.25)
    router = layer.router
    h = torch.randn(7, 24)
    expected = torch.empty(7, 6)
    for t in range(7):
        z = router.project.weight @ h[t]  # [5]
        for i in range(6):
            e = router.expert_embeddings[i]
            expected[t, i] = (z @ e) / (z.norm() * e.norm()) / 0.25
    torch.testing.assert_close(router(h), expected)
    assert router.project.weight.shape == (5, 24) and router.expert_embeddings.shape == (6, 5)


def test_layer_output_by_hand_token_by_token():
    """softmax over the cosine scores, each token's top-2, sum of weight x expert(token)."""
    layer = cosine_layer()
    x = torch.randn(2, 5, 24)
    flat = x.reshape(-1, 24)
    scores = layer.router(flat)
    ex = layer.experts
    expected = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        weights = torch.softmax(scores[t], -1)
        for i in weights.topk(2).indices.tolist():
            expected[t] += weights[i] * (F.gelu(flat[t] @ ex.w_in[i]) @ ex.w_out[i])
    torch.testing.assert_close(layer(x).reshape(-1, 24), expected, rtol=1e-5, atol=1e-6)


def test_scores_are_bounded_by_the_inverse_temperature_and_tau_is_learned():
    layer = cosine_layer()
    h = torch.randn(64, 24) * 100  # the token's scale does not matter: only its direction
    scores = layer.router(h)
    assert scores.abs().max() <= 1 / 0.07 + 1e-4
    torch.testing.assert_close(layer.router(h / 100), scores)
    assert layer.router.log_inverse_temperature.item() == pytest.approx(math.log(1 / 0.07))
    layer(torch.randn(2, 5, 24)).pow(2).sum().backward()
    for name, p in layer.router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():  # a runaway temperature is clamped at 1 / tau = 100
        layer.router.log_inverse_temperature.fill_(10.0)
    assert layer.router(h).abs().max() <= 100 + 1e-3


@pytest.mark.parametrize("key, value", [("cosine_dim", 0), ("cosine_temperature", 0.0), ("cosine_temperature", -1.0)])
def test_bad_options_are_refused(key, value):
    with pytest.raises(OptionError) as err:
        MoEConfig.build(d_model=8, d_ff=8, n_experts=2, router="cosine", **{key: value})
    assert err.value.key == key


def test_flops_analytic_equals_counted():
    layer = cosine_layer(cosine_dim=7)
    layer.experts.use_grouped_mm = False  # plain matmuls: torch's own counting formula
    x = torch.randn(3, 8, 24)
    with torch.no_grad(), FlopCounterMode(display=False) as router_count:
        layer.router(x.reshape(-1, 24))
    with torch.no_grad(), FlopCounterMode(display=False) as layer_count:
        layer(x)
    analytic = moe_flops_per_token(layer.cfg)
    assert analytic["router"] == 2 * 24 * 7 + 2 * 7 * 6
    assert router_count.get_total_flops() == 24 * analytic["router"]
    assert layer_count.get_total_flops() == 24 * (analytic["router"] + analytic["experts"])


def test_listed_checked_trained_and_evaluated_in_the_lm(capsys, tmp_path, prepared):
    assert "cosine" in listed(capsys, "router")
    options = listed_options(capsys)
    assert "cosine_dim (default 16)" in options and "cosine_temperature (default 0.07)" in options
    evaluation, bench = check_train_evaluate(tmp_path, prepared("lm"), "lm", "softmax-top2", router="cosine")
    assert evaluation["experts_per_token"] == pytest.approx(2.0)
    assert bench["flops_breakdown"]["router"] > 0
