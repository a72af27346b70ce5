"""Expert-choice routing (Zhou et al. 2022; moe/selection/expert_choice.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from familylab import check_train_evaluate, listed, study_params
from moelab.cli import main
from moelab.config import ConfigError
from moelab.models.switch import SwitchSeq2Seq, stack_moe_configs
from moelab.moe import MoEConfig, MoELayer, OptionError, moe_flops_per_token
from moelab.moe.selection.expert_choice import ExpertChoice
from moelab.resolve import load_params, resolve_run

E, D, K = 4, 12, 2


def ec_layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    values = dict(
        d_model=D, d_ff=16, n_experts=E, top_k=K, selection="expert_choice", aux_loss_coef=0.0, z_loss_coef=0.0
    )
    return MoELayer(MoEConfig.build(**{**values, **kw}))


def test_layer_output_by_hand_sequence_by_sequence():
    """Padded batch: in each sequence of n real tokens every expert takes its ceil(K n / E) tokens of
    largest softmax weight; a token's output is the weighted sum over the experts that took it."""
    layer = ec_layer()
    x = torch.randn(3, 7, D)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False  # n = 5
    mask[2, 2:] = False  # n = 2
    ex = layer.experts
    expected = torch.zeros_like(x)
    picks_per_expert = torch.zeros(E, dtype=torch.long)
    for b in range(3):
        n = int(mask[b].sum())
        h = x[b, :n]
        w = torch.softmax(layer.router(h), -1)  # [n, E]
        capacity = math.ceil(K * n / E)
        for i in range(E):
            for t in w[:, i].topk(capacity).indices.tolist():
                expected[b, t] += w[t, i] * (F.gelu(h[t] @ ex.w_in[i]) @ ex.w_out[i])
            picks_per_expert[i] += capacity
    out = layer(x, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # every expert computed exactly C tokens per sequence: 4 + 3 + 1
    assert layer.last_stats.tokens_per_expert.tolist() == picks_per_expert.tolist() == [8] * E
    assert layer.last_stats.tokens == 14 and layer.last_stats.slots_selected == 8 * E


def select(weights: torch.Tensor, top_k: int) -> list[tuple[int, int]]:
    """The (token, expert) slots expert choice takes from weights [N, E] of one sequence."""
    rule = ExpertChoice(MoEConfig.build(d_model=8, d_ff=8, n_experts=weights.shape[1], top_k=top_k))
    slots = rule(weights)
    return list(zip(slots.token.tolist(), slots.expert.tolist()))


def test_a_token_may_get_no_expert_or_all_of_them():
    weights = torch.full((8, E), 0.1)
    weights[:2] = 0.9  # tokens 0 and 1 are every expert's favourites; C = ceil(1 * 8 / 4) = 2
    assert select(weights, top_k=1) == [(t, e) for t in (0, 1) for e in range(E)]


def test_a_later_token_changes_earlier_routing_which_is_why_it_is_not_causal():
    weights = torch.rand(8, E) * 0.1
    weights[:2, 0] = torch.tensor([0.5, 0.4])  # expert 0 takes tokens 0 and 1 (C = 2)
    assert {(0, 0), (1, 0)} <= set(select(weights, top_k=1))
    weights[7, 0] = 0.9  # the last token outbids token 1
    assert (1, 0) not in select(weights, top_k=1) and (7, 0) in select(weights, top_k=1)
    assert not ExpertChoice.is_causal(None)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"top_k": 0}, "top_k"),
        ({"capacity_factor": 1.0}, "capacity_factor"),
        ({"bias_update_rate": 0.01}, "bias_update_rate"),
        ({"causal": True, "group_len": 8}, "selection"),
    ],
)
def test_refused_settings_name_their_key(options, key):
    values = {**dict(d_model=8, d_ff=8, n_experts=E, top_k=K, selection="expert_choice"), **options}
    with pytest.raises(OptionError) as err:
        MoEConfig.build(**values).validate()
    assert err.value.key == key


def test_flops_analytic_equals_counted_at_the_realised_experts_per_token():
    layer = ec_layer()
    layer.experts.use_grouped_mm = False  # plain matmuls: torch's own counting formula
    x = torch.randn(2, 5, D)  # C = ceil(2 * 5 / 4) = 3: 3 E / 5 = 2.4 experts per token, not k = 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    realised = layer.last_stats.slots_selected / layer.last_stats.tokens
    assert realised == pytest.approx(2.4)
    analytic = moe_flops_per_token(layer.cfg, realised)
    assert counter.get_total_flops() == pytest.approx(10 * (analytic["router"] + analytic["experts"]), rel=1e-12)


def test_the_lm_refuses_it_in_one_line(tmp_path, capsys):
    path = study_params(tmp_path, "lm", "expert-choice-top2")
    assert main(["check", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("moelab check: error: params.yaml: gate_presets.expert-choice-top2.selection"), err
    assert "expert_choice is not: each expert picks its top-C tokens of the whole sequence" in err


def test_summarisation_routes_the_encoder_by_expert_choice_and_the_decoder_by_token_choice(tmp_path):
    params = load_params(study_params(tmp_path, "summarization", "expert-choice-top2"))  # moelab check passes
    run = resolve_run(params, task="summarization", gate="expert-choice-top2", model="e8")
    encoder, decoder = stack_moe_configs(run.model, run.data.max_target_len)
    assert (encoder.selection, encoder.causal) == ("expert_choice", False)
    assert (decoder.selection, decoder.causal, decoder.top_k) == ("token_choice", True, K)
    torch.manual_seed(0)
    model = SwitchSeq2Seq(run.model, 97, max_target_len=run.data.max_target_len).eval()
    layers = {name: m.moe.cfg.selection for name, m in model.hf.named_modules() if hasattr(m, "moe")}
    assert {n.split(".")[0]: s for n, s in layers.items()} == {"encoder": "expert_choice", "decoder": "token_choice"}
    source = torch.randint(2, 97, (2, 9))
    summary = model.generate(source, torch.ones_like(source), max_new_tokens=3)
    assert summary.shape[0] == 2 and summary.shape[1] <= 4
    with pytest.raises(ConfigError, match="capacity_factor"):  # a bad option is still refused for the encoder
        params.moe["capacity_factor"] = 1.0
        resolve_run(params, task="summarization", gate="expert-choice-top2", model="e8")


def test_listed_checked_trained_and_evaluated_in_the_classifier(capsys, tmp_path, prepared):
    assert "expert_choice" in listed(capsys, "selection")
    evaluation, bench = check_train_evaluate(
        tmp_path, prepared("classification"), "classification", "expert-choice-top2"
    )
    assert evaluation["experts_per_token"] >= 2.0  # ceil(k n / E) >= k n / E per sequence
    assert evaluation["load_cv"] == pytest.approx(0.0)  # every expert takes C tokens of every sequence
    assert len(bench["experts_per_token"]) == 2
