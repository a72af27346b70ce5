"""Classification (masked pooling, metrics, loss, FLOPs) and a tiny CLI run of each non-LM task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import loop_experts
from moelab.cli import main
from moelab.models.classifier import EncoderClassifier, masked_mean
from moelab.resolve import load_params, resolve_run
from moelab.tasks.classification import accuracy_macro_f1, classifier_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
VOCAB, MAX_LEN, CLASSES = 97, 16, 3


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def classifier(params, **kw) -> EncoderClassifier:
    torch.manual_seed(0)
    return EncoderClassifier(VOCAB, MAX_LEN, CLASSES, resolve_run(params, task="classification", **kw).model).eval()


# ------------------------------------------------------------------ 7. classification pieces
def test_masked_mean_by_hand():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]; the last row is padding
    assert torch.equal(masked_mean(x, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("gate", ["softmax-top2", "sparsemax"])
def test_appended_padding_leaves_the_logits_unchanged(params, gate):
    model = classifier(params, gate=gate)
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 9))
    padded = torch.cat([ids, torch.randint(0, VOCAB, (2, 5))], 1)  # [2, 14]: 5 padding ids of any value
    mask = torch.arange(14) < 9  # [14]
    with torch.no_grad():
        plain = model(ids, torch.ones(2, 9, dtype=torch.bool))  # [2, C]
        tokens = [layer.last_stats.tokens for layer in model.moe_layers()]
        with_pad = model(padded, mask.expand(2, 14))
    diff = (plain - with_pad).abs().max().item()
    assert diff < 1e-6, f"padding changed the logits by {diff:.3g}"
    assert [layer.last_stats.tokens for layer in model.moe_layers()] == tokens == [18.0, 18.0]


def test_accuracy_and_macro_f1_by_hand():
    pred = [0, 0, 1, 2, 2, 2]
    true = [0, 1, 1, 2, 2, 0]
    # class 0: tp 1, fp 1, fn 1 -> 2/4; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1, fn 0 -> 4/5;
    # class 3 is never true nor predicted -> 0 (counted: macro-F1 is over all n_classes)
    acc, f1 = accuracy_macro_f1(pred, true, 4)
    assert acc == pytest.approx(4 / 6)
    assert f1 == pytest.approx((1 / 2 + 2 / 3 + 4 / 5 + 0) / 4)
    assert accuracy_macro_f1(pred, true, 3)[1] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert accuracy_macro_f1([1, 0], [1, 0], 2) == (1.0, 1.0)


def test_classifier_loss_is_cross_entropy_of_the_logits(params):
    model = classifier(params, gate="softmax-top2")
    ids = torch.randint(0, VOCAB, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[1, 6:] = False
    labels = torch.tensor([0, 2, 1, 2])
    loss, info = model.loss({"input_ids": ids, "attention_mask": mask.long(), "labels": labels})
    logits = model(ids, mask)  # [B, C]
    manual = -(logits - logits.exp().sum(-1, keepdim=True).log())[torch.arange(4), labels].mean()
    assert info["tokens"] == 4
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


@pytest.mark.parametrize("gate, router", [("softmax-top2", "linear"), ("sparsemax", "attention")])
def test_classifier_flops_match_torch_flop_counter(params, gate, router):
    run = resolve_run(params, task="classification", gate=gate, router=router)
    model = loop_experts(classifier(params, gate=gate, router=router))
    ids = torch.randint(0, VOCAB, (2, MAX_LEN))
    # the math backend runs attention as plain (b)mm's, which the flop counter sees on CPU
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, torch.ones_like(ids, dtype=torch.bool))
    realised = [layer.last_stats.slots_selected / layer.last_stats.tokens for layer in model.moe_layers()]
    analytic = classifier_flops_per_token(run.model, CLASSES, MAX_LEN, realised)["total"]
    assert counter.get_total_flops() / ids.numel() == pytest.approx(analytic, rel=1e-9)


# ------------------------------------------------------------------ 8. tiny end-to-end CLI runs
TINY = {
    "summarization": dict(
        data=dict(max_records=40, vocab_size=300, max_source_len=32, max_target_len=8),
        evaluate=dict(batch_size=4, max_batches=1, samples=2, max_new_tokens=6),
    ),
    "classification": dict(
        data=dict(max_records=60, vocab_size=300, seq_len=24), evaluate=dict(batch_size=8, max_batches=1, samples=3)
    ),
}
QUALITY = {"summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum"), "classification": ("accuracy", "macro_f1")}
QUALITY = {task: tuple(f"{split}_{k}" for split in ("val", "test") for k in keys) for task, keys in QUALITY.items()}


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for task, sections in TINY.items():
        for name, values in sections.items():
            data[task][name].update(values)
        for section in ("pretrain", "train"):
            data[task][section].update(
                steps=3, batch_size=4, warmup_steps=0, eval_every=3, eval_batches=1, checkpoint_every=3
            )
    path = tmp_path_factory.mktemp("tiny") / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("task, gate", [("summarization", "softmax-top2"), ("classification", "sparsemax")])
def test_prepare_pretrain_train_evaluate_through_the_cli(tiny_params, tmp_path, monkeypatch, task, gate):
    """The study's path for one variant, in the study's layout (moelab/study.py) under a fresh project
    directory: prepare, the task's bases, the variant's run fine-tuned from its base, its evaluation."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    assert main(["prepare", "--task", task, "--out", str(data), "--params", str(tiny_params)]) == 0
    pretrain = ["pretrain", "--task", task, "--quiet", "--params", str(tiny_params), "--data-dir", str(data)]
    assert main([*pretrain, "--jobs", "1"]) == 0  # one after another: the side-by-side path is the pipeline tests'
    assert (tmp_path / "models" / "base" / task / "e8" / "best.pt").is_file()
    assert (tmp_path / "models" / "base" / task / "dense" / "best.pt").is_file()
    cell = [
        "--task",
        task,
        "--router",
        "linear",
        "--gate",
        gate,
        "--model",
        "e8",
        "--seed",
        "0",
        "--params",
        str(tiny_params),
        "--data-dir",
        str(data),
        "--quiet",
    ]
    assert main(["train", *cell]) == 0
    assert main(["evaluate", *cell]) == 0
    bench_cell = [a for a in cell if a != "--quiet"]
    assert main(["benchmark", *bench_cell, "--out", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    # analytic FLOPs from the realised routing == torch's FlopCounterMode on the real batch
    assert bench["flops_analytic_over_counted"] == pytest.approx(1.0, rel=1e-9)
    # flops_per_token is at k (all E for soft routing); top-2 without drops realises exactly k
    if gate == "softmax-top2":
        assert bench["flops_per_token"] == pytest.approx(bench["flops_per_token_realised"], rel=1e-12)
    else:
        assert bench["flops_per_token"] > bench["flops_per_token_realised"]
    layers = yaml.safe_load(tiny_params.read_text())[task]["models"]["e8"]["n_layers"]
    sparse = 2 * layers if task == "summarization" else layers  # the summariser: encoder and decoder layers
    assert bench["moe_blocks"] == len(bench["experts_per_token"]) == sparse
    assert bench["params_active"] < bench["params_total"] and bench["forward_p90_ms"] >= bench["forward_ms"] > 0
    metrics = tmp_path / "metrics" / "study" / task / f"linear-{gate}-e8"
    train = json.loads((metrics / "train" / "s0.json").read_text())
    assert train["steps"] == 3
    meta = json.loads((metrics / "train" / "s0.meta.json").read_text())
    assert meta["config"]["init_from"] == f"models/base/{task}/e8" and meta["inputs"]["base"]  # from its base
    ev = json.loads((metrics / "eval" / "s0.json").read_text())
    for key in QUALITY[task]:
        assert 0.0 <= ev[key] <= 1.0, key
    assert ev["test_loss"] > 0 and ev["flops_per_token"] > 0 and ev["test_examples"] > 0
    assert all(isinstance(v, (int, float)) or v is None for v in ev.values()), "eval.json holds numbers only"
    routing = json.loads((metrics / "eval" / "s0.routing.json").read_text())
    assert len(routing["layers"]) == sparse  # every MoE layer: encoder then decoder for the summariser
    for layer in routing["layers"]:
        assert layer["tokens"] > 0 and len(layer["tokens_per_expert"]) == 8
        assert sum(layer["tokens_per_expert"]) == pytest.approx(layer["experts_per_token"] * layer["tokens"])
        assert sum(layer["experts_per_token_hist"]) == layer["tokens"]
    if gate == "softmax-top2":
        assert ev["experts_per_token"] == pytest.approx(2.0)
    for key in ("load_cv", "routing_entropy", "dropped_fraction"):
        assert ev[key] is not None, key
    samples = (metrics / "eval" / "s0.samples.md").read_text()
    assert samples.strip() and samples.startswith(f"# Samples: {task}/")
    if task == "summarization":
        assert samples.count("## Example") == 2 and "**generated:**" in samples
    else:
        rows = [line for line in samples.splitlines() if line.startswith("| ")][1:]  # after the header
        assert len(rows) == 3
