"""Summarisation: HF Switch Transformer with moelab MoE layers.

Router swap against HF's own SparseMLP, the save_pretrained checkpoint path, seq2seq FLOPs against
torch's flop counter, padding kept out of routing, the balancing loss, and ROUGE by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import loop_experts
from moelab.cli import main
from moelab.config import ConfigError
from moelab.models.lm import IGNORE
from moelab.models.switch import MoESparseMLP, SwitchSeq2Seq, swap_sparse_mlps
from moelab.moe import InitConfig, MoEConfig
from moelab.moe.balancing.aux_loss import switch_aux_loss
from moelab.moe.balancing.z_loss import router_z_loss
from moelab.resolve import load_params, resolve_run
from moelab.tasks.summarization import SummarizationTask, pad_batch, rouge_scores, seq2seq_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97


def sparse_layers(model) -> int:
    """How many sparse MLPs HF's config says the model has (encoder + decoder): the independent count."""
    config = model.hf.config
    return config.num_sparse_encoder_layers + config.num_sparse_decoder_layers


def tiny_switch(expert_capacity: int = 64, vocab_size: int = 64, seed: int = 0):
    """A random 2+2-layer Switch, every FFN sparse (4 experts), deterministic routing (no jitter/dropout)."""
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    cfg = SwitchTransformersConfig(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2,
        num_experts=4,
        expert_capacity=expert_capacity,
        router_jitter_noise=0.0,
        router_dtype="float32",
        dropout_rate=0.0,
        dense_act_fn="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return SwitchTransformersForConditionalGeneration(cfg).eval()


def hf_sparse_mlps(model) -> dict:
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    return {name: m for name, m in model.named_modules() if isinstance(m, SwitchTransformersSparseMLP)}


# ------------------------------------------------------------------ 1. router swap is faithful
# HF's Top1Router (transformers 5.x): argmax of softmax(x W_r); a token keeps its expert while the cumulative
# count of that expert along the *sequence* (cumsum over dim -2, per batch row) is <= expert_capacity, so the
# earliest tokens win and a dropped token gets zero MLP output; the kept output is scaled by the top-1 prob.
# moelab with top_k=1, policy "position" and C = ceil(cf * T / E) per sequence is the same rule; with T = 16,
# E = 4, cf = 0.75 gives C = 3 exactly (exact in binary: no float rounding in the ceil).
@pytest.mark.parametrize("expert_capacity, capacity_factor", [(64, 0.0), (3, 0.75)], ids=["no-drops", "drops"])
def test_swapped_sparse_mlps_match_hf_switch(expert_capacity, capacity_factor):
    hf = tiny_switch(expert_capacity)
    ours = copy.deepcopy(hf)
    moe = MoEConfig.build(
        d_model=32,
        d_ff=64,
        n_experts=4,
        router="linear",
        norm="softmax",
        top_k=1,
        capacity_factor=capacity_factor,
        capacity_policy="position",
        activation="relu",
    )
    assert swap_sparse_mlps(ours, moe, moe, InitConfig(), pretrained=True) == 4
    assert not hf_sparse_mlps(ours), "every HF SparseMLP must be replaced"

    # record each HF SparseMLP's (input, output) during one forward of the original model
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0], out)))
        for name, m in hf_sparse_mlps(hf).items()
    ]
    torch.manual_seed(1)
    ids, dec = torch.randint(2, 64, (3, 16)), torch.randint(2, 64, (3, 16))  # [B, S], [B, L]; S = L = 16
    with torch.no_grad():
        theirs = hf(input_ids=ids, decoder_input_ids=dec).logits  # [B, L, V]
        mine = ours(input_ids=ids, decoder_input_ids=dec).logits
        for h in hooks:
            h.remove()
        dropped = 0.0
        for name, (x, y) in seen.items():  # x, y: [B, T, d]
            wrapper = ours.get_submodule(name)
            diff = (wrapper(x) - y).abs().max().item()
            assert diff < 1e-5, f"{name}: max |moelab - HF| = {diff:.3g}"
            dropped += wrapper.moe.last_stats.slots_dropped
    assert len(seen) == 4
    if capacity_factor > 0:
        assert dropped > 0, "this case must exercise capacity drops"
    else:
        assert dropped == 0
    diff = (mine - theirs).abs().max().item()
    assert diff < 1e-5, f"logits: max |moelab - HF| = {diff:.3g}"


# ------------------------------------------------------------------ 2. the save_pretrained path
SMALL_RUN = dict(steps=3, batch_size=4, warmup_steps=0, eval_every=3, eval_batches=1, checkpoint_every=3)
SMALL_EVAL = dict(batch_size=4, max_batches=1, samples=2, max_new_tokens=6, num_beams=1)


def small_params(data: dict, pretrained: str | None = None) -> dict:
    """The repo's params with a tiny summarisation run (and e8 = a 4-expert preset of `pretrained`)."""
    s = data["summarization"]
    s["data"].update(max_records=40, vocab_size=300, max_source_len=32, max_target_len=8)
    s["train"].update(SMALL_RUN)
    s["evaluate"].update(SMALL_EVAL)
    if pretrained:
        s["models"]["e8"].update(n_experts=4, d_ff=64, pretrained=pretrained)  # matches the checkpoint
        s["models"]["e16"].update(pretrained=pretrained)  # 16 != 4: must be refused
    return data


@pytest.fixture(scope="module")
def summ_data(tmp_path_factory) -> Path:
    """Prepared bundled summarisation corpus (40 pairs per split, BPE of 300)."""
    tmp = tmp_path_factory.mktemp("summ")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(small_params(yaml.safe_load((ROOT / "params.yaml").read_text()))))
    assert main(["prepare", "--task", "summarization", "--out", str(tmp / "data"), "--params", str(params)]) == 0
    return tmp / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, summ_data) -> tuple[Path, Path]:
    """(a dir holding a random Switch in safetensors + a fast tokenizer, params.yaml whose presets use it)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tmp = tmp_path_factory.mktemp("pretrained")
    ckpt = tmp / "switch-tiny"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(summ_data / "tokenizer.json")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    model = tiny_switch(vocab_size=len(tok), seed=3)
    model.config.output_router_logits = True  # load_hf must switch HF's router losses off again
    model.save_pretrained(ckpt, safe_serialization=True)
    tok.save_pretrained(ckpt)
    assert (ckpt / "model.safetensors").exists()
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(small_params(yaml.safe_load((ROOT / "params.yaml").read_text()), str(ckpt))))
    return ckpt, params


def cli_cell(
    params: Path, data: Path, out: Path, task: str = "summarization", model: str = "e8", gate: str = "softmax-top1"
) -> list[str]:
    return [
        "--task",
        task,
        "--router",
        "linear",
        "--gate",
        gate,
        "--model",
        model,
        "--seed",
        "0",
        "--params",
        str(params),
        "--data-dir",
        str(data),
        "--models-dir",
        str(out / "model"),
        "--metrics-dir",
        str(out / "metrics"),
        "--quiet",
    ]


def test_pretrained_checkpoint_experts_are_loaded_into_moelab(checkpoint, summ_data):
    from transformers import SwitchTransformersForConditionalGeneration

    ckpt, params = checkpoint
    run = resolve_run(load_params(params), task="summarization", router="linear", gate="softmax-top1", model="e8")
    task = SummarizationTask(run, summ_data)
    model = task.build_model()
    reference = SwitchTransformersForConditionalGeneration.from_pretrained(ckpt)
    assert model.n_swapped == 4 and task.vocab_size == reference.config.vocab_size
    assert reference.config.output_router_logits is True and model.hf.config.output_router_logits is False
    for name, sparse in hf_sparse_mlps(reference).items():
        moe = model.hf.get_submodule(name).moe
        assert moe.cfg.d_ff == 64 and moe.cfg.activation == "relu"  # sizes come from the checkpoint
        for e in range(4):
            expert = sparse.experts[f"expert_{e}"]
            assert torch.equal(moe.experts.w_in[e], expert.wi.weight.T), f"{name} expert {e} w_in"
            assert torch.equal(moe.experts.w_out[e], expert.wo.weight.T), f"{name} expert {e} w_out"
        assert torch.equal(moe.router.proj.weight, sparse.router.classifier.weight)
    # the raw texts are tokenised with the checkpoint's tokenizer, cut to max_source_len
    batch = task.collate("train", [0, 1])  # input_ids [2, S <= 32]
    assert batch["input_ids"].shape[1] <= run.data.max_source_len
    assert task.decode(batch["input_ids"][0]).startswith("summarize: " + task.texts("train")["documents"][0][:10])


def pretrain(params: Path, data: Path, *size: str) -> None:
    """`moelab pretrain` of a checkpoint preset: the checkpoint becomes the base (models/base/..., cwd)."""
    assert main(["pretrain", "--task", "summarization", *size, "--params", str(params), "--data-dir", str(data)]) == 0


def test_pretrained_checkpoint_trains_and_evaluates_through_the_cli(checkpoint, summ_data, tmp_path, monkeypatch):
    """The checkpoint is the base (imported by `moelab pretrain`, nothing trained); the variant starts from its
    weights with fresh routing, trains and evaluates."""
    _, params = checkpoint
    monkeypatch.chdir(tmp_path)
    pretrain(params, summ_data, "--model", "e8")
    assert (tmp_path / "models" / "base" / "summarization" / "e8" / "best.pt").is_file()
    cell = cli_cell(params, summ_data, tmp_path)
    assert main(["train", *cell]) == 0
    assert main(["evaluate", *cell]) == 0
    metrics = json.loads((tmp_path / "metrics" / "eval" / "s0.json").read_text())
    for key in ("test_rouge1", "test_rouge2", "test_rougeL", "test_rougeLsum", "val_rougeL"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test_examples"] == SMALL_EVAL["batch_size"]
    assert len(json.loads((tmp_path / "metrics" / "eval" / "s0.routing.json").read_text())["layers"]) == 4


def test_fresh_router_on_a_checkpoint_keeps_its_experts_and_gets_moelab_init(checkpoint, summ_data, tmp_path):
    """router_from_checkpoint: false (SparTMoE discards the checkpoint's router): the experts are still the
    checkpoint's, the router is Switch-initialised (truncated normal, |w| <= 2 sqrt(router_scale / d))."""
    from transformers import SwitchTransformersForConditionalGeneration

    ckpt, params = checkpoint
    raw = yaml.safe_load(params.read_text())
    raw["summarization"]["models"]["e8"]["router_from_checkpoint"] = False
    fresh_params = tmp_path / "params.yaml"
    fresh_params.write_text(yaml.safe_dump(raw))
    run = resolve_run(load_params(fresh_params), task="summarization", router="linear", gate="softmax-top1", model="e8")
    model = SummarizationTask(run, summ_data).build_model()
    reference = SwitchTransformersForConditionalGeneration.from_pretrained(ckpt)
    bound = 2 * (run.model.init.router_scale / 32) ** 0.5  # d_model of the checkpoint: 32
    for name, sparse in hf_sparse_mlps(reference).items():
        moe = model.hf.get_submodule(name).moe
        assert torch.equal(moe.experts.w_in[0], sparse.experts["expert_0"].wi.weight.T)
        router = moe.router.proj.weight
        assert not torch.allclose(router, sparse.router.classifier.weight)
        assert router.abs().max().item() <= bound and router.std().item() > bound / 8


def test_preset_with_other_n_experts_than_the_checkpoint_is_one_config_error(checkpoint, summ_data, tmp_path, capsys):
    _, params = checkpoint
    run = resolve_run(load_params(params), task="summarization", gate="softmax-top1", model="e16")
    with pytest.raises(ConfigError, match="n_experts = 16 .* 4 experts"):
        SummarizationTask(run, summ_data).build_model()
    capsys.readouterr()  # the pipeline meets it first where the checkpoint becomes the base
    argv = [
        "pretrain",
        "--task",
        "summarization",
        "--model",
        "e16",
        "--params",
        str(params),
        "--data-dir",
        str(summ_data),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_experts: 4" in err, err


def dense_checkpoint_run(params: Path, top_k: int = 2):
    data = load_params(params)
    return resolve_run(
        dataclasses.replace(data, dense=dataclasses.replace(data.dense, top_k=top_k)), task="summarization", dense=True
    )


def test_dense_baseline_of_a_checkpoint_is_its_first_k_experts_averaged_without_a_router(checkpoint, summ_data):
    """--dense on a checkpoint: every sparse MLP becomes one FFN of width k * d_ff whose output is the mean of
    the checkpoint's experts 0..k-1 (HF's own expert modules are the reference); no router, no MoE layer."""
    from transformers import SwitchTransformersForConditionalGeneration
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router

    from moelab.models.switch import DenseFromExperts

    ckpt, params = checkpoint
    model = SummarizationTask(dense_checkpoint_run(params), summ_data).build_model().eval()
    reference = SwitchTransformersForConditionalGeneration.from_pretrained(ckpt).eval()
    assert not model.moe_layers() and not hf_sparse_mlps(model.hf)
    assert not any(isinstance(m, SwitchTransformersTop1Router) for m in model.modules())
    assert not [n for n, _ in model.named_parameters() if "router" in n]
    dense = {name: m for name, m in model.hf.named_modules() if isinstance(m, DenseFromExperts)}
    assert set(dense) == set(hf_sparse_mlps(reference)) and len(dense) == 4
    torch.manual_seed(4)
    x = torch.randn(2, 5, 32)  # [B, T, d]
    with torch.no_grad():
        for name, sparse in hf_sparse_mlps(reference).items():
            assert dense[name].ffn.w_in.out_features == 2 * 64  # k * d_ff
            expected = (sparse.experts["expert_0"](x) + sparse.experts["expert_1"](x)) / 2
            diff = (dense[name](x) - expected).abs().max().item()
            assert diff < 1e-6, f"{name}: max |dense - mean of experts 0, 1| = {diff:.3g}"


def counted_flops_per_token(model, vocab_size: int, b: int = 2, s: int = 12, t: int = 7) -> float:
    """torch's FlopCounterMode over one forward of random [b, s] sources and [b, t] targets, per token."""
    torch.manual_seed(5)
    ids, labels = torch.randint(2, vocab_size, (b, s)), torch.randint(2, vocab_size, (b, t))
    # the math backend runs attention as plain (b)mm's, which the flop counter sees on CPU
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids), labels)
    return counter.get_total_flops() / (b * (s + t))


def test_dense_baseline_of_a_checkpoint_costs_the_active_flops_of_top_k(checkpoint, summ_data):
    """Both counts (the dense baseline and a top-2 MoE of the same checkpoint) = torch's flop counter; the
    dense FFN FLOPs = the MoE's expert FLOPs, so dense total = MoE total - router."""
    _, params = checkpoint
    dense_task = SummarizationTask(dense_checkpoint_run(params), summ_data)
    moe_run = resolve_run(load_params(params), task="summarization", router="linear", gate="softmax-top2", model="e8")
    moe_task = SummarizationTask(moe_run, summ_data)
    dense, moe = dense_task.flops_per_token(context=12, n_target=7), moe_task.flops_per_token(context=12, n_target=7)
    dense_model, moe_model = dense_task.build_model().eval(), loop_experts(moe_task.build_model().eval())
    assert counted_flops_per_token(dense_model, dense_task.vocab_size) == pytest.approx(dense["total"], rel=1e-9)
    assert counted_flops_per_token(moe_model, moe_task.vocab_size) == pytest.approx(moe["total"], rel=1e-9)
    assert dense["experts"] == dense["router"] == 0 and moe["router"] > 0
    assert dense["dense_ffn"] == pytest.approx(moe["dense_ffn"] + moe["experts"], rel=1e-12)
    assert dense["total"] == pytest.approx(moe["total"] - moe["router"], rel=1e-12)


def test_dense_baseline_of_a_checkpoint_trains_and_evaluates_through_the_cli(
    checkpoint, summ_data, tmp_path, monkeypatch
):
    _, params = checkpoint
    monkeypatch.chdir(tmp_path)
    pretrain(params, summ_data, "--dense")
    cell = cli_cell(params, summ_data, tmp_path)
    cell = ["--dense", *cell[cell.index("--seed") :], "--task", "summarization"]
    assert main(["train", *cell]) == 0
    assert main(["evaluate", *cell]) == 0
    metrics = json.loads((tmp_path / "metrics" / "eval" / "s0.json").read_text())
    for key in ("test_rouge1", "test_rougeL", "val_rougeL"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert json.loads((tmp_path / "metrics" / "eval" / "s0.routing.json").read_text())["layers"] == []


def test_dense_width_that_is_not_whole_experts_of_the_checkpoint_is_one_config_error(checkpoint, summ_data):
    _, params = checkpoint
    run = dense_checkpoint_run(params, top_k=5)  # 5 experts of 64: more than the checkpoint's 4
    with pytest.raises(ConfigError, match="k x its expert d_ff \\(64\\), 1 <= k <= 4"):
        SummarizationTask(run, summ_data).build_model()


# ------------------------------------------------------------------ scratch models
@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def scratch(params, **kw) -> SwitchSeq2Seq:
    run = resolve_run(params, task="summarization", **kw)
    torch.manual_seed(0)
    return SwitchSeq2Seq(run.model, VOCAB, pad_id=0, eos_id=1, max_target_len=run.data.max_target_len).eval()


# ------------------------------------------------------------------ 3. seq2seq FLOPs
@pytest.mark.parametrize("gate, router", [("softmax-top1", "linear"), ("sparsemax", "attention")])
def test_seq2seq_flops_match_torch_flop_counter(params, gate, router):
    model = loop_experts(scratch(params, gate=gate, router=router))
    with torch.no_grad():  # larger router weights than the init's, so sparsemax's support is partial
        for layer in model.moe_layers():
            for p in layer.router.parameters():
                p.mul_(10)
    b, s, t = 2, 12, 7
    ids, labels = torch.randint(2, VOCAB, (b, s)), torch.randint(2, VOCAB, (b, t))
    # the math backend runs attention as plain (b)mm's, which the flop counter sees on CPU
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids), labels)
    realised = [layer.last_stats.slots_selected / layer.last_stats.tokens for layer in model.moe_layers()]
    if gate == "softmax-top1":
        assert realised == [1.0] * sparse_layers(model) and realised
    else:
        assert 1.0 < sum(realised) / len(realised) < 8.0, "sparsemax support: between top-1 and all experts"
    run = resolve_run(params, task="summarization", gate=gate, router=router)
    analytic = seq2seq_flops_per_token(model.hf.config, s, t, run.model.moe, realised)["total"]
    measured = counter.get_total_flops() / (b * (s + t))
    assert measured == pytest.approx(analytic, rel=1e-9)


# ------------------------------------------------------------------ 4. padding is not routed
def test_source_padding_changes_neither_routing_nor_outputs(params):
    """[short, long] padded into one batch == each run alone: logits, expert loads and capacity drops
    (capacity is per sequence of real tokens, so padding must not raise it either)."""
    moe = {**params.moe, "capacity_factor": 1.0, "capacity_policy": "position"}
    model = scratch(dataclasses.replace(params, moe=moe), gate="softmax-top1")
    enc = model.moe_layers()[0]  # encoder layers come first
    torch.manual_seed(2)
    seqs = [torch.randint(2, VOCAB, (6,)), torch.randint(2, VOCAB, (10,))]
    labels = torch.randint(2, VOCAB, (2, 5))  # [B, L], no target padding
    ids, mask = pad_batch([s.numpy() for s in seqs], pad=0)  # [2, 10]
    ids[0, 6:] = torch.randint(2, VOCAB, (4,))  # padding content must not matter
    with torch.no_grad():
        batched = model(ids, mask.long(), labels)  # [2, L, V]
        stats, (pos, _) = copy.deepcopy(enc.last_stats), enc.last_assignment
        alone, loads, drops = [], [], 0.0
        for i, s in enumerate(seqs):
            alone.append(model(s[None], torch.ones(1, len(s), dtype=torch.long), labels[i : i + 1])[0])
            loads.append(enc.last_stats.tokens_per_expert)
            drops += enc.last_stats.slots_dropped
    for i in range(2):
        diff = (batched[i] - alone[i]).abs().max().item()
        assert diff < 1e-5, f"example {i}: padding changed the logits by {diff:.3g}"
    assert stats.tokens == stats.slots_selected == 16, "padding tokens were routed"
    assert not bool(((pos >= 6) & (pos < 10)).any()), "a padding position was computed by an expert"
    assert torch.equal(stats.tokens_per_expert, loads[0] + loads[1])
    assert drops > 0 and stats.slots_dropped == drops


# ------------------------------------------------------------------ 5. balancing loss
def test_training_loss_is_ce_and_every_moe_layer_balancing_loss_counts_once(params):
    model = scratch(params, gate="softmax-top2")
    assert model.hf.config.output_router_logits is False
    inputs = {}
    hooks = [
        m.moe.register_forward_hook(lambda mod, args, out: inputs.__setitem__(mod, args))
        for m in model.modules()
        if isinstance(m, MoESparseMLP)
    ]
    batch = {
        "input_ids": torch.randint(2, VOCAB, (2, 9)),
        "attention_mask": torch.ones(2, 9, dtype=torch.long),
        "labels": torch.randint(2, VOCAB, (2, 5)),
    }
    batch["labels"][0, 3:] = IGNORE
    loss, info = model.loss(batch)
    for h in hooks:
        h.remove()
    # the task loss is plain CE over real targets: no HF router z/aux loss folded in
    logits = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    ce = F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=IGNORE)
    assert info["tokens"] == 8 and loss.item() == pytest.approx(ce.item(), rel=1e-6)
    # recompute each layer's aux + z loss from its own router on the tokens it saw
    layers = model.moe_layers()
    assert len(layers) == len(inputs) == model.n_swapped == sparse_layers(model) >= 2
    expected = torch.zeros(())
    for layer in layers:
        x, mask = inputs[layer]  # [B, T, d], [B, T] bool
        h = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
        scores = layer.router(h.float())  # [N, E]
        weights = scores.softmax(-1)
        top = weights.topk(2, -1).indices.reshape(-1)  # [N * k]
        cfg = layer.cfg
        assert cfg.aux_loss_coef > 0 and cfg.z_loss_coef > 0
        expected = (
            expected
            + cfg.aux_loss_coef * switch_aux_loss(weights, top, cfg.n_routed)
            + cfg.z_loss_coef * router_z_loss(scores)
        )
    assert model.balancing_loss().item() == pytest.approx(expected.item(), rel=1e-5)
    layer_sum = sum(layer.balancing_loss.item() for layer in layers)
    assert model.balancing_loss().item() == pytest.approx(layer_sum, rel=1e-6)


# ------------------------------------------------------------------ 6. ROUGE
def test_rouge_by_hand():
    # 1: "the cat sat" vs "the cat ran": unigrams 2/3, bigrams {the cat} 1/2, LCS 2 -> 2/3
    # 2: identical -> 1.0 everywhere; means: rouge1 = (2/3 + 1) / 2, rouge2 = (1/2 + 1) / 2
    m = rouge_scores(["the cat sat", "a dog barked"], ["the cat ran", "a dog barked"])
    assert m["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["rouge2"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["rougeL"] == pytest.approx((2 / 3 + 1) / 2)


def test_rouge_lsum_splits_sentences_on_newlines():
    # swapped sentences: L sees "red fox blue sky" vs "blue sky red fox" (LCS 2 of 4 -> 0.5);
    # Lsum takes the union LCS per reference sentence (each sentence matched whole -> 1.0)
    m = rouge_scores(["red fox\nblue sky"], ["blue sky\nred fox"])
    assert m["rougeL"] == pytest.approx(0.5)
    assert m["rougeLsum"] == pytest.approx(1.0)
    assert m["rouge1"] == pytest.approx(1.0)
