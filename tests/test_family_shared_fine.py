"""Shared + fine-grained experts (DeepSeekMoE, Dai et al. 2024; OLMoE): moe/config.py, moe/layer.py.

m = expert_granularity splits each of the E experts of width d_ff into m of width d_ff / m; n_shared
of that width see every token with weight 1; a token takes k_routed = m top_k - n_shared routed ones,
so its active FFN compute is that of top_k experts of width d_ff.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import SwitchTransformersConfig

from familylab import check_train_evaluate, listed_options
from moelab.config import ConfigError
from moelab.flops import counted_flops, decoder_flops_per_token
from moelab.models.switch import moe_config_for
from moelab.moe import MoEConfig, MoELayer, OptionError, moe_flops_per_token
from moelab.moe.init import InitConfig
from moelab.resolve import load_params, resolve_run

D, F_WIDTH, E = 16, 32, 3


def config(**kw) -> MoEConfig:
    values = dict(d_model=D, d_ff=F_WIDTH, n_experts=E, top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0)
    return MoEConfig.build(**{**values, **kw})


def layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(config(**kw))


def test_sizes_and_active_flops_stay_those_of_top_k_coarse_experts():
    cfg = config(expert_granularity=4, n_shared=2)
    assert (cfg.n_routed, cfg.expert_width, cfg.k_routed) == (12, 8, 6)
    coarse = config()
    assert (coarse.n_routed, coarse.expert_width, coarse.k_routed) == (E, F_WIDTH, 2)
    assert moe_flops_per_token(cfg)["experts"] == moe_flops_per_token(coarse)["experts"] == 2 * 4 * D * F_WIDTH
    assert moe_flops_per_token(cfg)["router"] == 2 * D * 12  # the router scores m E experts
    assert moe_flops_per_token(cfg, 5.0)["experts"] == (5 + 2) * 4 * D * 8  # realised routed + shared


@pytest.mark.parametrize(
    "options, key",
    [
        ({"expert_granularity": 3}, "expert_granularity"),  # 32 % 3
        ({"expert_granularity": 0}, "expert_granularity"),
        ({"n_shared": 2}, "n_shared"),  # m k - n_shared = 0 routed experts
        ({"n_shared": -1}, "n_shared"),
        ({"top_k": 4, "expert_granularity": 2}, "top_k"),  # top_k counts coarse experts: <= E
    ],
)
def test_bad_settings_are_refused_naming_the_key(options, key):
    with pytest.raises(OptionError) as err:
        config(**options).validate()
    assert err.value.key == key


def test_layer_output_by_hand_token_by_token():
    """softmax over the m E fine experts, each token's top k_routed, plus every shared expert at weight 1."""
    moe = layer(expert_granularity=4, n_shared=1)  # 12 experts of width 8, 7 routed + 1 shared per token
    x = torch.randn(2, 5, D)
    flat = x.reshape(-1, D)
    ex, shared = moe.experts, moe.shared_experts
    assert ex.w_in.shape == (12, D, 8) and shared.w_in.shape == (1, D, 8)
    expected = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        weights = torch.softmax(moe.router.proj.weight @ flat[t], -1)  # [12]
        for i in weights.topk(7).indices.tolist():
            expected[t] += weights[i] * (F.gelu(flat[t] @ ex.w_in[i]) @ ex.w_out[i])
        expected[t] += F.gelu(flat[t] @ shared.w_in[0]) @ shared.w_out[0]
    torch.testing.assert_close(moe(x).reshape(-1, D), expected, rtol=1e-5, atol=1e-6)
    assert moe.last_stats.summary()["experts_per_token"] == 7.0  # routed experts: shared ones are not routed


def test_several_shared_experts_and_padding():
    moe = layer(expert_granularity=2, n_shared=3, top_k=2)  # 4 - 3 = 1 routed + 3 shared
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    out = moe(x, mask)
    shared = moe.shared_experts
    for b, t in mask.nonzero().tolist():
        h = x[b, t]
        weights = torch.softmax(moe.router.proj.weight @ h, -1)
        i = int(weights.argmax())
        routed = weights[i] * (F.gelu(h @ moe.experts.w_in[i]) @ moe.experts.w_out[i])
        always = sum(F.gelu(h @ shared.w_in[j]) @ shared.w_out[j] for j in range(3))
        torch.testing.assert_close(out[b, t], routed + always, rtol=1e-5, atol=1e-6)
    assert (out[~mask] == 0).all(), "padding gets no shared expert either"


def test_shared_experts_follow_the_switch_init_of_their_fan_in():
    moe = layer(expert_granularity=2, n_shared=1, d_ff=2048, d_model=64)
    moe.reset_parameters(InitConfig(ffn_scale=0.3))
    cut = 0.8796256610342398  # std of a standard normal cut at +-2 (scipy.stats.truncnorm(-2, 2).std())
    for w, fan_in in [(moe.shared_experts.w_in, 64), (moe.shared_experts.w_out, 1024)]:
        std = w.double().std().item()
        assert std == pytest.approx(math.sqrt(0.3 / fan_in) * cut, rel=0.03)  # 65536 draws: 5 sigma ~ 2%


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-mm", "loop"])
def test_flops_analytic_equals_counted(grouped):
    moe = layer(expert_granularity=4, n_shared=1)
    moe.experts.use_grouped_mm = moe.shared_experts.use_grouped_mm = grouped
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        counted = counted_flops(lambda: moe(x))
    if not grouped:  # the independent count: torch's own mm formula
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            moe(x)
        assert counter.get_total_flops() == counted
    analytic = moe_flops_per_token(moe.cfg)
    assert counted == 12 * (analytic["router"] + analytic["experts"])


def test_lm_flops_count_the_shared_experts(params_file):
    path = params_file(lambda d: d["moe"].update(expert_granularity=4, n_shared=1))
    run = resolve_run(load_params(path), task="lm", gate="softmax-top2")
    dense = resolve_run(load_params(path), task="lm", dense=True)
    moe_flops, dense_flops = decoder_flops_per_token(run.model, 97, 16), decoder_flops_per_token(dense.model, 97, 16)
    assert moe_flops["experts"] == dense_flops["dense_ffn"], "the dense baseline spends the same active FFN FLOPs"


def test_listed_checked_trained_and_evaluated_in_the_lm(capsys, tmp_path, prepared):
    options = listed_options(capsys)
    assert "expert_granularity (default 1)" in options and "n_shared (default 0)" in options
    evaluation, bench = check_train_evaluate(tmp_path, prepared("lm"), "lm", "fine4-shared1-top2")
    assert evaluation["experts_per_token"] == pytest.approx(7.0)  # 4 x 2 - 1 routed (+ 1 shared)
    # e8: d 64, d_ff 128 -> 32 routed experts of width 32 per layer, 2 layers; a token uses 7 routed + the
    # shared one, so 32 - 7 routed experts of 2 x 64 x 32 weights per layer are inactive
    assert bench["params_active"] == bench["params_total"] - 2 * (32 - 7) * 2 * 64 * 32


@pytest.mark.parametrize("options", [{"expert_granularity": 2}, {"n_shared": 1}])
def test_a_pretrained_switch_checkpoint_refuses_split_or_shared_experts(options):
    """Its E experts of width d_ff are copied in as they are: no split, no shared expert beside them."""
    hf = SwitchTransformersConfig(d_model=D, d_ff=F_WIDTH, num_experts=E)
    with pytest.raises(ConfigError, match="expert_granularity: 1, n_shared: 0"):
        moe_config_for(hf, config(**options))
