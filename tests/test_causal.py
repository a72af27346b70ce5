"""Causal models never see the future, with expert capacity too (moe/capacity.py).

1. Property: for every allowed (capacity_policy x top_k x capacity_factor) of a causal decoder, many
   seeds cycling through every registered (router, norm) pair (a new component is tested without
   editing this file), train and eval mode, changing token t leaves the logits at positions < t
   bit-identical.
2. Every disallowed setting is refused, in one line naming the key, by `moelab check` and resolve_run.
3. Perplexity, generation and training route the same way: the logits generation sees at each step
   are those of one teacher-forced forward at that position, with the same experts kept.

Bit-identity and BLAS: a matmul of 1-3 rows runs another kernel than one of more rows (MKL, measured
on this CPU: x[:m] @ W differs from (x @ W)[:m] in the last bit for m <= 3). Changing a later token
changes how many rows each expert gets, so with the real expert kernels an earlier position can move
by rounding (~3e-8) although its routing and inputs are identical. The bit-identity property is
therefore checked with `rowwise_experts` (each slot its own [1, d] x [d, f] bmm: the same kernel
whatever the block sizes) and, with the real kernels, as identical routing + float32 rounding.
Generation re-runs a growing prefix, whose attention matmuls have other shapes than the full
sequence's (even the dense model is not bit-identical there), so it is checked the latter way.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from moelab.cli import main
from moelab.config import ConfigError, ModelConfig
from moelab.models.lm import DecoderLM
from moelab.models.switch import SwitchSeq2Seq
from moelab.moe import MoEConfig, MoELayer, OptionError
from moelab.moe.capacity import CAPACITY_POLICIES
from moelab.moe.normalisers import NORMALISERS
from moelab.moe.routers import ROUTERS
from moelab.resolve import load_params, resolve_run
from moelab.tasks.summarization import SummarizationTask

VOCAB, T, E = 50, 12, 4
CAPACITY_FACTORS = (0.0, 0.25, 0.5, 1.0, 1.5)
DROPPING = (0.25, 0.5)  # C = ceil(cf * T * k / E) <= 1.5 k of 12 tokens: drops are certain


def causally_allowed(policy: str, top_k: int, capacity_factor: float) -> bool:
    """The rule of moe/capacity.py, written out: dropless is always causal; with capacity, k >= 1 and
    capacity filled in token order (token_order, or position with k = 1)."""
    if capacity_factor == 0:
        return True
    return top_k >= 1 and (policy == "token_order" or (policy == "position" and top_k == 1))


ALL_SETTINGS = list(itertools.product(CAPACITY_POLICIES.names(), range(E + 1), CAPACITY_FACTORS))
ALLOWED = [s for s in ALL_SETTINGS if causally_allowed(*s)]


def moe_config(policy: str, top_k: int, capacity_factor: float, **kw) -> MoEConfig:
    return MoEConfig.build(
        d_model=16,
        d_ff=32,
        n_experts=E,
        top_k=top_k,
        capacity_factor=capacity_factor,
        capacity_policy=policy,
        **kw,
    )


ROUTER_NORMS = list(itertools.product(ROUTERS.names(), NORMALISERS.names()))  # every registered pair


def gating_for(index: int, policy: str, top_k: int, capacity_factor: float) -> MoEConfig:
    """The index-th (cyclically) registered (router, norm) pair a causal layer accepts with this setting;
    odd indices add the aux-loss-free selection bias where it applies (top_k >= 1)."""
    for offset in range(len(ROUTER_NORMS)):
        router, norm = ROUTER_NORMS[(index + offset) % len(ROUTER_NORMS)]
        bias = 0.01 if top_k and index % 2 else 0.0
        cfg = moe_config(policy, top_k, capacity_factor, router=router, norm=norm, bias_update_rate=bias)
        try:
            cfg.replace(causal=True, group_len=T).validate()
        except OptionError:
            continue
        return cfg
    raise AssertionError(f"no registered router/norm accepts {policy}, k {top_k}, cf {capacity_factor}")


def decoder(cfg: MoEConfig, seed: int, dropout: float = 0.0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(VOCAB, T, ModelConfig(16, 2, 2, 64, cfg, moe_every=1, dropout=dropout))


def rowwise_experts(model: torch.nn.Module) -> None:
    """Run every MoE layer's experts slot by slot ([1, d] x [d, f] bmm per slot): each slot's result
    is then independent of how many slots its expert got (see the module docstring)."""
    for layer in model.modules():
        if isinstance(layer, MoELayer):
            ex = layer.experts

            def forward(x, tokens_per_expert, ex=ex):
                expert = torch.repeat_interleave(torch.arange(len(tokens_per_expert)), tokens_per_expert)  # [S]
                hidden = ex.act(torch.bmm(x.unsqueeze(1), ex.w_in[expert]))  # [S, 1, f]
                return torch.bmm(hidden, ex.w_out[expert]).squeeze(1)  # [S, d]

            ex.forward = forward


def assignments(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per MoE layer: (position, expert) of the slots its last forward computed; position indexes
    the flattened [B * T] input."""
    return [layer.last_assignment for layer in model.moe_layers()]


def before(assignment: list, t: int, length: int) -> list[torch.Tensor]:
    """The slots of positions < t (within each sequence of `length`), as sorted position * E + expert codes."""
    out = []
    for position, expert in assignment:
        keep = position % length < t
        out.append((position[keep] * E + expert[keep]).sort().values)
    return out


def forward(model, ids: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same dropout masks for the original and the perturbed batch
    return model(ids)


# ------------------------------------------------------------------ 1. the property
def test_the_allowed_settings_are_exactly_the_causal_rule():
    """validate() accepts a causal layer iff the written-out rule allows it, and names the key if not."""
    for policy, top_k, cf in ALL_SETTINGS:
        cfg = moe_config(policy, top_k, cf).replace(causal=True, group_len=T)
        if causally_allowed(policy, top_k, cf):
            cfg.validate()
            continue
        with pytest.raises(OptionError) as err:
            cfg.validate()
        assert err.value.key == ("capacity_factor" if top_k == 0 else "capacity_policy"), (policy, top_k, cf)
        moe_config(policy, top_k, cf).validate()  # the same layer without causality is fine


@pytest.mark.parametrize("policy, top_k, capacity_factor", ALLOWED, ids=[f"{p}-k{k}-cf{c}" for p, k, c in ALLOWED])
def test_a_later_token_never_changes_earlier_logits(policy, top_k, capacity_factor):
    """Four seeds, each with another registered (router, norm) pair, a selection bias on odd ones."""
    dropped = 0.0
    for seed in range(4):
        cfg = gating_for(4 * ALLOWED.index((policy, top_k, capacity_factor)) + seed, policy, top_k, capacity_factor)
        model = decoder(cfg, seed, dropout=0.1)
        rowwise_experts(model)
        with torch.no_grad():
            for layer in model.moe_layers():
                if "selection_bias" in layer.balancing:
                    layer.balancing["selection_bias"].bias.normal_(0.0, 0.1)
        ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))
        for mode in ("train", "eval"):
            model.train(mode == "train")
            base = forward(model, ids, seed)
            dropped += sum(layer.last_stats.slots_dropped for layer in model.moe_layers())
            for t in range(1, T):
                changed = ids.clone()
                changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % VOCAB  # another token in each row
                out = forward(model, changed, seed)
                assert torch.equal(out[:, :t], base[:, :t]), f"seed {seed} {mode}: token {t} changed earlier logits"
                assert not torch.equal(out[:, t:], base[:, t:]), "the perturbation must change something"
    if capacity_factor in DROPPING:
        assert dropped > 0, "this setting must exercise capacity drops"
    if capacity_factor == 0:
        assert dropped == 0


@pytest.mark.parametrize("policy, top_k", [("token_order", 2), ("token_order", 1), ("position", 1)])
def test_with_the_real_expert_kernels_earlier_routing_is_identical(policy, top_k):
    """The grouped-matmul experts (the real path): the same kept slots before t, logits to rounding."""
    model = decoder(moe_config(policy, top_k, 0.5), seed=0).eval()
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids)
        base_slots = assignments(model)
        assert sum(layer.last_stats.slots_dropped for layer in model.moe_layers()) > 0
        for t in range(1, T):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            out = model(changed)
            for ours, reference in zip(before(assignments(model), t, T), before(base_slots, t, T)):
                assert torch.equal(ours, reference), f"token {t} changed which experts earlier tokens kept"
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ 2. refused settings
REFUSED = {  # case: (moe options, gate preset, the key the one-line error must name)
    "weight-policy": ({"capacity_factor": 0.5, "capacity_policy": "weight"}, "softmax-top1", "moe.capacity_policy"),
    "position-top2": ({"capacity_factor": 0.5, "capacity_policy": "position"}, "softmax-top2", "moe.capacity_policy"),
    "soft-routing": ({"capacity_factor": 0.5, "capacity_policy": "token_order"}, "softmax-soft", "moe.capacity_factor"),
}


def single_task(data: dict, task: str, gate: str, moe: dict) -> None:
    """params.yaml whose experiment and study are `task` x `gate` only, with these moe options."""
    data.update(task=task, tasks=[task], gates=[gate])
    data.update({key: data["gate_presets"][gate][key] for key in ("norm", "top_k")})
    data["moe"].update(moe)


@pytest.mark.parametrize("task", ["lm", "summarization"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_moelab_check_refuses_a_non_causal_decoder_in_one_line(params_file, capsys, task, case):
    """The LM is a decoder; summarisation's decoder gets the same options: both refuse, naming the key."""
    moe, gate, key = REFUSED[case]
    path = params_file(lambda d: single_task(d, task, gate, moe))
    assert main(["check", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("moelab check: error: params.yaml: " + key), err
    assert f"(task {task})" in err, err
    with pytest.raises(ConfigError, match=key):
        resolve_run(load_params(path), task=task, gate=gate)


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_same_settings_are_allowed_in_a_bidirectional_encoder(params_file, capsys, case):
    moe, gate, _ = REFUSED[case]
    path = params_file(lambda d: single_task(d, "classification", gate, moe))
    assert main(["check", "--params", str(path)]) == 0, capsys.readouterr().err


def test_a_non_causal_selection_rule_is_refused_by_the_lm_and_kept_out_of_the_summariser_decoder(params_file, capsys):
    path = params_file(lambda d: single_task(d, "lm", "softmax-top2", {"selection": "expert_choice"}))
    assert main(["check", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("moelab check: error: params.yaml: moe.selection"), err
    with pytest.raises(ConfigError, match="moe.selection"):
        resolve_run(load_params(path), task="lm", gate="softmax-top2")
    path = params_file(lambda d: single_task(d, "summarization", "softmax-top2", {"selection": "expert_choice"}))
    assert main(["check", "--params", str(path)]) == 0
    run = resolve_run(load_params(path), task="summarization", gate="softmax-top2")
    encoder, decoder = SummarizationTask.moe_configs(run)
    assert (encoder.selection, decoder.selection) == ("expert_choice", "token_choice") and decoder.causal


def test_a_gate_preset_override_is_named_by_its_preset_key(params_file, capsys):
    def mutate(data):
        data["gate_presets"]["weight-capacity"] = {"norm": "softmax", "top_k": 1, "capacity_factor": 0.5}
        single_task(data, "lm", "weight-capacity", {"capacity_policy": "weight"})

    assert main(["check", "--params", str(params_file(mutate))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "moe.capacity_policy = 'weight'" in err, err


# ------------------------------------------------------------------ 3. generation routes like the full forward
def record_steps(model, layers: list[MoELayer], output: torch.nn.Module) -> list[tuple[torch.Tensor, list]]:
    """Hook `output` (whose output is the logits): after each forward, (logits, slots of `layers`)."""
    steps: list = []

    def hook(module, args, logits):
        steps.append((logits.detach().clone(), assignments_of(layers)))

    output.register_forward_hook(hook)
    return steps


def assignments_of(layers: list[MoELayer]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in layer.last_assignment) for layer in layers]


def test_lm_generation_sees_the_logits_and_routing_of_one_full_forward():
    """Each generation step re-runs the prefix; with capacity (and drops) its last-position logits and
    every kept slot of the prefix are those of one forward over the final sequence."""
    model = decoder(moe_config("token_order", 2, 0.5), seed=0).eval()
    steps = record_steps(model, model.moe_layers(), model.head)
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
    ids = model.generate(prompt, T - 4, temperature=0.0)  # greedy, up to exactly max_len tokens
    assert ids.shape == (3, T) and len(steps) == T - 4
    steps = list(steps)  # the hook also records the forward below
    with torch.no_grad():
        full = model(ids)
    assert sum(layer.last_stats.slots_dropped for layer in model.moe_layers()) > 0
    full_slots = assignments(model)
    for step, (logits, slots) in enumerate(steps):
        length = 4 + step  # the prefix this step ran on
        torch.testing.assert_close(logits[:, -1], full[:, length - 1], rtol=0, atol=1e-5)
        assert torch.equal(ids[:, length], full[:, length - 1].argmax(-1)), "greedy picks the full forward's argmax"
        # position p of the prefix is p of the full sequence (rows of `length` vs rows of T)
        ours = [(p // length * T + p % length, e) for p, e in slots]
        for a, b in zip(before(ours, length, T), before(full_slots, length, T)):
            assert torch.equal(a, b), f"step {step}: the prefix kept other experts than the full forward"


def test_seq2seq_generation_sees_the_logits_and_routing_of_teacher_forcing(params_file):
    """Summariser with decoder capacity: no KV cache (each step re-runs the decoder prefix), and each
    step's logits and decoder routing are those of one teacher-forced forward over the summary."""
    path = params_file(lambda d: single_task(d, "summarization", "softmax-top2", {"capacity_factor": 1.0}))
    run = resolve_run(load_params(path), task="summarization", gate="softmax-top2", model="e8")
    torch.manual_seed(0)
    model = SwitchSeq2Seq(run.model, VOCAB, pad_id=0, eos_id=1, max_target_len=8).eval()
    assert model.use_cache is False
    decoder_layers = [
        m.moe for name, m in model.hf.named_modules() if name.startswith("decoder.") and hasattr(m, "moe")
    ]
    assert decoder_layers and all(layer.cfg.causal for layer in decoder_layers)
    steps = record_steps(model, decoder_layers, model.hf.lm_head)
    source = torch.randint(2, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(source)
    mask[0, 7:] = 0  # one padded source
    summary = model.generate(source, mask, max_new_tokens=7)  # [B, L + 1], starting with the start token
    assert len(steps) == summary.shape[1] - 1 >= 2
    steps = list(steps)  # the hook also records the forward below
    with torch.no_grad():
        full = model(source, mask, decoder_input_ids=summary[:, :-1])  # [B, L, V]
    full_slots = assignments_of(decoder_layers)
    length_full = summary.shape[1] - 1
    assert sum(layer.last_stats.slots_dropped for layer in decoder_layers) > 0
    for step, (logits, slots) in enumerate(steps):
        length = step + 1
        torch.testing.assert_close(logits[:, -1], full[:, step], rtol=0, atol=1e-5)
        ours = [(p // length * length_full + p % length, e) for p, e in slots]
        for a, b in zip(before(ours, length, length_full), before(full_slots, length, length_full)):
            assert torch.equal(a, b), f"step {step}: the decoder prefix kept other experts than teacher forcing"
