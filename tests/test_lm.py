"""The decoder LM: causal mask, padding excluded from the loss, tied embeddings, FLOPs, dense baseline."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import loop_experts
from moelab.flops import decoder_flops_per_token
from moelab.models.lm import IGNORE, DecoderLM, filter_logits
from moelab.resolve import load_params, resolve_run


@pytest.fixture
def params(params_file):
    return load_params(params_file())


def model_for(params, **kw) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(97, 16, resolve_run(params, **kw).model).eval()


def test_position_t_cannot_see_t_plus_1(params):
    model = model_for(params, gate="softmax-top2")
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 97
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6), "positions < 6 must not see tokens >= 6"
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_padding_is_excluded_from_the_loss(params):
    model = model_for(params, gate="sparsemax")
    ids = torch.randint(0, 97, (1, 10))
    targets = torch.randint(0, 97, (1, 10))
    padded_targets = targets.clone()
    padded_targets[:, 7:] = IGNORE
    loss, info = model.loss({"input_ids": ids, "targets": padded_targets})
    logits = model(ids[:, :7])
    expected = F.cross_entropy(logits[0], targets[0, :7])
    assert info["tokens"] == 7
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and whatever sits in padded input positions changes nothing
    other = ids.clone()
    other[:, 7:] = 0
    assert model.loss({"input_ids": other, "targets": padded_targets})[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_embeddings_are_tied(params):
    model = model_for(params)
    assert model.head.weight is model.tok_emb.weight


def test_moe_every_places_moe_blocks(params_file):
    from moelab.moe import MoELayer

    p = load_params(params_file(lambda d: d["lm"]["models"]["e8"].update(n_layers=4, moe_every=2)))
    model = model_for(p)
    assert [isinstance(b.ffn, MoELayer) for b in model.blocks] == [False, True, False, True]


@pytest.mark.parametrize("gate, router", [("softmax-top2", "linear"), ("softmax-soft", "attention")])
def test_analytic_flops_match_torch_flop_counter(params, gate, router):
    run = resolve_run(params, gate=gate, router=router)
    model = loop_experts(model_for(params, gate=gate, router=router))
    ids = torch.randint(0, 97, (2, 16))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the math backend runs attention as plain matmuls, which the flop counter sees on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids)
    analytic = decoder_flops_per_token(run.model, 97, context=16)["total"]
    assert counter.get_total_flops() / ids.numel() == pytest.approx(analytic, rel=1e-9)


def test_dense_baseline_spends_the_same_active_ffn_flops_as_top_k(params):
    moe_run = resolve_run(params, gate="softmax-top2")
    dense_run = resolve_run(params, dense=True)
    moe_flops = decoder_flops_per_token(moe_run.model, 97, 16)
    dense_flops = decoder_flops_per_token(dense_run.model, 97, 16)
    assert dense_flops["dense_ffn"] + dense_flops["experts"] == moe_flops["dense_ffn"] + moe_flops["experts"]
    assert dense_flops["router"] == 0 and moe_flops["router"] > 0


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_lm_prepare_from_a_local_file_through_the_datasets_path(tmp_path, params_file):
    """The HF `datasets` code path (used for TinyStories) on a small local JSONL copy."""
    from moelab.data.prepare import prepare

    stories = [
        {"text": f"Once upon a time a small fox number {i} found a red ball and played all day."} for i in range(60)
    ]
    src = tmp_path / "tinystories.jsonl"
    src.write_text("\n".join(json.dumps(s) for s in stories))
    p = load_params(params_file(lambda d: d["lm"]["data"].update(source=str(src), vocab_size=300)))
    stats = prepare("lm", p.lm.data, tmp_path / "prepared")
    assert (tmp_path / "prepared" / "manifest.json").exists()
    assert stats["train_documents"] > 0 and stats["test_tokens"] > 0
    assert (tmp_path / "prepared" / "tokenizer.json").exists()


def test_references_and_bits_per_character_on_the_prepared_corpus(prepared, params):
    """The LM's reference rows on the same targets as the models: unigram > Kneser-Ney bigram > trigram in
    perplexity; bpc = total NLL / ln 2 / characters of the targets' text for every row, the character
    count being that of the decoded targets (each <eos> one character); a model's evaluation uses the same
    count, so a model and a reference are compared in bits per character on the same text."""
    import math

    from moelab.ngram import KneserNey
    from moelab.tasks import build_task

    task = build_task(resolve_run(params, task="lm", dense=True), prepared("lm"))
    refs = task.references()
    assert refs["unigram"]["test_ppl"] > refs["kn-bigram"]["test_ppl"] > refs["kn-trigram"]["test_ppl"] > 1
    assert [refs[n]["role"] for n in ("unigram", "kn-bigram", "kn-trigram")] == ["trivial", "bar", "context"]
    targets = task.scored_targets("test")
    chars = task.characters("test")
    assert chars == len(task.text(targets)) > targets.numel()  # BPE: several characters per token
    for name in ("unigram", "kn-bigram", "kn-trigram"):
        ref = refs[name]
        nll = ref["test_loss"] * ref["test_tokens"]
        assert ref["test_bpc"] == pytest.approx(nll / math.log(2) / chars, rel=1e-9)
        assert ref["test_tokens"] == targets.numel()
    # the bigram row is the n-gram model scored directly (context from the stream before each target)
    stream = task.stream("test").numpy()
    bigram = KneserNey(2, task.vocab_size).fit(task.stream("train").numpy())
    assert refs["kn-bigram"]["test_loss"] == pytest.approx(
        bigram.nll(stream[: 1 + targets.numel()], start=1) / targets.numel()
    )
    assert 0 < refs["kn-char-5gram"]["test_bpc"] < refs["unigram"]["test_bpc"]
