"""The MoE layer against independent references: hand computations, `entmax`, HF Switch."""

import math

import pytest
import torch
import torch.nn.functional as F

from moelab.moe import MoEConfig, MoELayer
from moelab.moe.balancing.aux_loss import switch_aux_loss
from moelab.moe.balancing.selection_bias import SelectionBias
from moelab.moe.balancing.z_loss import router_z_loss
from moelab.moe.normalisers.entmax import Entmax15, Sparsemax
from moelab.moe.selection.token_choice import TokenChoice


def config(**kw) -> MoEConfig:
    """Small layer config; MoE options (aux_loss_coef, ...) default to off unless given."""
    values = dict(
        d_model=8, d_ff=16, n_experts=4, router="linear", norm="softmax", top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0
    )
    values.update(kw)
    return MoEConfig.build(**values)


def layer(**kw) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(config(**kw))


def TopK(k, renormalize=False):  # noqa: N802 - the selection rule with top_k = k
    return TokenChoice(config(top_k=k, renormalize=renormalize))


def AllExperts():  # noqa: N802 - soft routing (top_k = 0)
    return TokenChoice(config(top_k=0))


def dense_reference(moe: MoELayer, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_e w[t, e] * expert_e(x_t), every expert run on every token (no dispatch)."""
    ex = moe.experts
    outs = torch.stack([ex.act(x @ ex.w_in[e]) @ ex.w_out[e] for e in range(ex.w_in.shape[0])], 1)  # [N, E, d]
    return (weights.unsqueeze(-1) * outs).sum(1)


# ------------------------------------------------------------------ normalisers
def test_sparsemax_hand_example():
    # z = [1, 0.5, -1]: support {1, 0.5}, tau = (1 + 0.5 - 1) / 2 = 0.25 -> p = [0.75, 0.25, 0]
    p = Sparsemax(None)(torch.tensor([[1.0, 0.5, -1.0]]))
    assert torch.allclose(p, torch.tensor([[0.75, 0.25, 0.0]]))


def test_entmax15_hand_example():
    # alpha = 1.5: p_i = [(z_i/2 - tau)]_+^2 with sum 1. z = [2, 0]: one expert gets all (z gap >= 2)
    assert torch.allclose(Entmax15(None)(torch.tensor([[2.0, 0.0]])), torch.tensor([[1.0, 0.0]]))
    # z = [0.5, 0]: tau solves (0.25 - tau)^2 + (0 - tau)^2 = 1 -> tau = (0.25 - sqrt(2 - 0.0625)) / 2
    tau = (0.25 - math.sqrt(2 - 0.25**2)) / 2
    expected = torch.tensor([[(0.25 - tau) ** 2, (0 - tau) ** 2]])
    assert torch.allclose(Entmax15(None)(torch.tensor([[0.5, 0.0]])), expected, atol=1e-6)


@pytest.mark.parametrize("ours, name", [(Sparsemax(None), "sparsemax"), (Entmax15(None), "entmax15")])
def test_sparse_normalisers_match_entmax_package(ours, name):
    import entmax

    scores = torch.randn(64, 8) * 3
    reference = getattr(entmax, name)(scores, dim=-1)
    out = ours(scores)
    assert torch.allclose(out, reference)
    assert torch.allclose(out.sum(-1), torch.ones(64), atol=1e-5)
    assert (out == 0).any(), "a true sparse normaliser puts exact zeros on low scores"
    assert not torch.allclose(out, F.relu(scores) / F.relu(scores).sum(-1, keepdim=True).clamp_min(1e-9))


# ------------------------------------------------------------------ selection
def test_top_k_keeps_k_largest_weights():
    w = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    s = TopK(2)(w)
    assert s.token.tolist() == [0, 0, 1, 1]
    assert s.expert.tolist() == [1, 2, 0, 2]
    assert torch.allclose(s.weight, torch.tensor([0.6, 0.3, 0.5, 0.3]))
    s = TopK(2, renormalize=True)(w)
    assert torch.allclose(s.weight, torch.tensor([0.6 / 0.9, 0.3 / 0.9, 0.5 / 0.8, 0.3 / 0.8]))


def test_soft_selection_takes_exactly_the_nonzero_support():
    w = Sparsemax(None)(torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]]))
    s = AllExperts()(w)
    assert list(zip(s.token.tolist(), s.expert.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_selection_bias_changes_choice_not_weight():
    w = torch.tensor([[0.5, 0.4, 0.1]])
    s = TopK(1)(w, selection_bias=torch.tensor([0.0, 0.2, 0.0]))
    assert s.expert.tolist() == [1] and torch.allclose(s.weight, torch.tensor([0.4]))


# ------------------------------------------------------------------ balancing
def test_switch_aux_loss_hand_computation():
    # 4 tokens, 2 experts, top-1 picks [0, 0, 0, 1]: f = [3/4, 1/4]; P = column means
    w = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    p = [(0.9 + 0.8 + 0.6 + 0.3) / 4, (0.1 + 0.2 + 0.4 + 0.7) / 4]
    expected = 2 * (0.75 * p[0] + 0.25 * p[1])
    assert switch_aux_loss(w, torch.tensor([0, 0, 0, 1]), 2).item() == pytest.approx(expected)
    # balanced routing with uniform weights gives the minimum, 1
    assert switch_aux_loss(torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), 2).item() == pytest.approx(1.0)


def test_switch_aux_loss_counts_slots_over_tokens_times_k():
    w = torch.full((2, 4), 0.25)
    # top-2: token 0 -> {0, 1}, token 1 -> {0, 2}: f = [2, 1, 1, 0] / (2 tokens * 2)
    loss = switch_aux_loss(w, torch.tensor([0, 1, 0, 2]), 4)
    assert loss.item() == pytest.approx(4 * sum(f * 0.25 for f in [0.5, 0.25, 0.25, 0.0]))


def test_router_z_loss_hand_computation():
    scores = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2), math.log(math.e + math.e**2)]
    assert router_z_loss(scores).item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)


def test_aux_loss_free_bias_update_rule():
    bias = SelectionBias(config(n_experts=3, top_k=1, bias_update_rate=0.1)).train()
    bias.record(torch.tensor([0, 0, 0, 1]))  # load = [3, 1, 0], mean 4/3
    bias.update()
    raw = torch.tensor([-0.1, 0.1, 0.1])  # sign(mean - load) * u
    assert torch.allclose(bias.bias, raw - raw.mean())
    assert bias.load.sum() == 0


def test_bias_balances_load_over_training_steps():
    torch.manual_seed(0)
    moe = layer(top_k=1, bias_update_rate=0.05, n_experts=4)
    with torch.no_grad():
        moe.router.proj.weight[0] += 2.0  # expert 0 is favoured by every token
    x = torch.randn(4, 32, 8).abs()
    moe.train()
    spread = []  # std of the per-expert load, each step
    for _ in range(60):
        moe(x)
        spread.append(moe.last_stats.tokens_per_expert.float().std().item())
        moe.update_balancing()
    # the sign update oscillates around balance; on average over the last steps the load is more even
    assert sum(spread[-20:]) / 20 < spread[0], spread


# ------------------------------------------------------------------ the layer
@pytest.mark.parametrize("norm", ["softmax", "sparsemax", "entmax15"])
@pytest.mark.parametrize("router", ["linear", "attention"])
def test_soft_routing_equals_dense_weighted_sum(norm, router):
    moe = layer(norm=norm, router=router, top_k=0)
    x = torch.randn(2, 5, 8)
    flat = x.reshape(-1, 8)
    weights = moe.normaliser(moe.router(flat))
    assert torch.allclose(moe(x).reshape(-1, 8), dense_reference(moe, flat, weights), atol=1e-5)


def test_top_k_output_uses_only_the_k_selected_experts():
    moe = layer(top_k=2)
    x = torch.randn(3, 4, 8)
    flat = x.reshape(-1, 8)
    weights = moe.normaliser(moe.router(flat))
    top = weights.topk(2, -1)
    masked = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
    assert torch.allclose(moe(x).reshape(-1, 8), dense_reference(moe, flat, masked), atol=1e-5)
    assert moe.last_stats.tokens_per_expert.sum() == 12 * 2


def test_zero_weight_experts_never_compute_a_token():
    moe = layer(norm="sparsemax", top_k=0)
    x = torch.randn(4, 8, 8) * 5
    seen = []
    original = moe.experts.forward
    moe.experts.forward = lambda xs, counts: (seen.append(xs.shape[0]), original(xs, counts))[1]
    moe(x)
    nonzero = int((moe.normaliser(moe.router(x.reshape(-1, 8))) > 0).sum())
    assert seen == [nonzero] and nonzero < 32 * 4


def test_padding_tokens_are_not_routed_or_counted():
    moe = layer(aux_loss_coef=1.0)
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    y = moe(x, mask)
    assert (y[1, 3:] == 0).all()
    assert moe.last_stats.tokens == 9 and moe.last_stats.tokens_per_expert.sum() == 18
    real = torch.cat([x[0], x[1, :3]]).unsqueeze(0)
    loss_masked = moe.balancing_loss
    moe(real)
    assert torch.allclose(loss_masked, moe.balancing_loss)


def test_gradients_reach_router_and_experts():
    for router in ("linear", "attention"):
        moe = layer(router=router, aux_loss_coef=0.01, z_loss_coef=0.01)
        y = moe(torch.randn(2, 5, 8))
        (y.pow(2).sum() + moe.balancing_loss).backward()
        for name, p in moe.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_router_formula():
    torch.manual_seed(0)
    for scaled in (True, False):
        moe = layer(router="attention", attention_scaled=scaled)
        h = torch.randn(5, 8)
        q = h @ moe.router.query.weight.t()
        expected = q @ moe.router.expert_embeddings.t() / (math.sqrt(8) if scaled else 1.0)
        assert torch.allclose(moe.router(h), expected, atol=1e-6)


def test_capacity_drops_lowest_weight_first():
    moe = layer(top_k=1, capacity_factor=1.0, n_experts=2, capacity_policy="weight")
    with torch.no_grad():  # every token prefers expert 0, by a margin that grows with x[0]
        moe.router.proj.weight.zero_()
        moe.router.proj.weight[0, 0] = 1.0
    x = torch.zeros(1, 4, 8)
    x[0, :, 0] = torch.tensor([1.0, 4.0, 2.0, 3.0])
    y = moe(x)  # capacity = ceil(1.0 * 4 / 2) = 2: tokens 1 and 3 (largest weights) kept
    assert moe.last_stats.slots_dropped == 2
    assert (y[0, [0, 2]] == 0).all() and (y[0, [1, 3]] != 0).any(dim=-1).all()


def test_stats_count_tokens_per_expert():
    moe = layer(top_k=1, n_experts=2)
    with torch.no_grad():
        moe.router.proj.weight.zero_()
        moe.router.proj.weight[0, 0] = 1.0
    x = torch.zeros(1, 4, 8)
    x[0, :, 0] = torch.tensor([1.0, -1.0, 2.0, 3.0])  # expert 0 for positive, expert 1 for negative
    moe(x)
    s = moe.last_stats.summary()
    assert s["tokens_per_expert"] == [3, 1]
    assert s["load_cv"] == pytest.approx(0.5)  # std([3,1]) / mean = 1 / 2
    assert s["experts_per_token"] == 1.0 and s["dropped_fraction"] == 0.0


# ------------------------------------------------------------------ against HF transformers
def test_top1_softmax_with_capacity_matches_hf_switch_sparse_mlp():
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    d, f, e, t = 16, 32, 4, 12
    hf_cfg = SwitchTransformersConfig(
        d_model=d,
        d_ff=f,
        num_experts=e,
        expert_capacity=2,
        router_jitter_noise=0.0,
        dense_act_fn="relu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    hf = SwitchTransformersSparseMLP(hf_cfg).eval()
    # capacity per sequence = ceil(cf * T * k / E) = ceil(cf * 12 / 4) = 2 -> cf = 2/3
    moe = MoELayer(
        config(
            d_model=d,
            d_ff=f,
            n_experts=e,
            top_k=1,
            norm="softmax",
            router="linear",
            capacity_factor=2 / 3,
            capacity_policy="position",
            activation="relu",
        )
    ).eval()
    with torch.no_grad():
        moe.router.proj.weight.copy_(hf.router.classifier.weight)
        for i in range(e):
            moe.experts.w_in[i].copy_(hf.experts[f"expert_{i}"].wi.weight.t())
            moe.experts.w_out[i].copy_(hf.experts[f"expert_{i}"].wo.weight.t())
    x = torch.randn(3, t, d)
    with torch.no_grad():
        ours, theirs = moe(x), hf(x)
    assert moe.last_stats.slots_dropped > 0, "the test must exercise capacity drops"
    assert (ours - theirs).abs().max().item() < 1e-5
