"""The paper preset as the smoke runs it: Switch-Base at its published sizes, the README's command, the variants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MoelabError

PUBLISHED_EXPERTS = {"switch-base-8": 8, "switch-base-16": 16}
ROUTERS = ("linear", "attention")  # SparTMoE's two routers ...
GATES = ("softmax-top2", "sparsemax", "softmax-soft")  # ... x its soft gates (sparsemax, softmax) + top-2
BATCH_ROWS = 4  # the preset's batch size (PRESET_COMMAND)
SUMMARIES = 2  # test dialogues generated and scored per variant
T5_TOKENIZER_SIZE = 32100  # T5's SentencePiece (32,000) + 100 sentinels; the model's vocabulary is 32,128

# The `-S` values of the command in README "The paper preset" (router / norm / top_k vary per variant);
# tests/test_paper_smoke.py checks that the two agree.
PRESET_COMMAND = {
    "summarization.data.source": "knkarthick/samsum",
    "summarization.data.document_column": "dialogue",
    "summarization.data.max_source_len": 512,
    "summarization.data.max_target_len": 128,
    "summarization.train.lr": 0.00005,
    "summarization.train.batch_size": 4,
    "summarization.train.steps": 18415,
    "summarization.train.warmup_steps": 0,
    "summarization.train.weight_decay": 0,
    "summarization.train.min_lr_ratio": 0,
    "summarization.evaluate.num_beams": 1,
    "summarization.evaluate.max_new_tokens": 128,
    "summarization.evaluate.max_batches": None,
    "summarization.evaluate.batch_size": 16,
}
SEEDS = 3  # the preset's study: every variant x 3 seeds (README: `-S 'tasks=[summarization]' -S 'models=[paper]'`)
GIB = 2**30


class PaperSmokeError(MoelabError):
    """A model or variant of the smoke could not be built or run."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the smoke: its name, its HF config (built as a stand-in when no checkpoint is given), how
    many optimiser steps each variant runs, and which variants."""

    name: str
    config: object  # transformers.SwitchTransformersConfig
    steps: int
    checkpoint: str | None = None  # a local directory holding the real checkpoint (config, safetensors, tokenizer)
    variants: tuple[tuple[str, str], ...] | None = None  # (router, gate) pairs; None: the smoke's


def published_config(n_experts: int):
    """google/switch-base-<n_experts> as its config.json on the hub gives it (switch-base-8 ... -256 differ only
    in num_experts): T5-Base sizes, every other FFN a Switch layer, relu, no router bias, vocabulary 32,128."""
    from transformers import SwitchTransformersConfig

    return SwitchTransformersConfig(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_heads=12,
        num_layers=12,
        num_decoder_layers=12,
        num_sparse_encoder_layers=6,  # HF derives encoder/decoder_sparse_step = 12 // 6 = 2
        num_sparse_decoder_layers=6,
        num_experts=n_experts,
        expert_capacity=64,
        router_bias=False,
        dense_act_fn="relu",
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def published_specs(models: dict[str, tuple[int, list | None]], checkpoints: dict[str, str]) -> list[ModelSpec]:
    """{name: (steps, variants or None)} -> the ModelSpecs of those published models."""
    return [
        ModelSpec(name, published_config(PUBLISHED_EXPERTS[name]), n, checkpoints.get(name), v and tuple(v))
        for name, (n, v) in models.items()
    ]


def preset_params(base: Path, out: Path, checkpoint: Path, n_experts: int, source: str, new_tokens: int) -> Path:
    """params.yaml with the README command's `-S` values, `pretrained` = the checkpoint directory and n_experts =
    its experts, the SAMSum copy as data.source, and evaluation cut to SUMMARIES dialogues of `new_tokens`
    tokens; written to `out` and validated as any params file (load_params)."""
    import yaml

    from ..config import read_yaml
    from ..resolve import load_params

    raw = read_yaml(base)
    overrides = {
        **PRESET_COMMAND,
        "summarization.data.source": source,
        "summarization.models.paper.pretrained": str(checkpoint),
        "summarization.models.paper.n_experts": n_experts,
        "summarization.evaluate.batch_size": SUMMARIES,
        "summarization.evaluate.max_batches": 1,
        "summarization.evaluate.max_new_tokens": new_tokens,
    }
    for key, value in overrides.items():
        *path, last = key.split(".")
        section = raw
        for part in path:
            section = section[part]
        section[last] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(out)
    return out


def variant_names(routers=ROUTERS, gates=GATES) -> list[tuple[str, str]]:
    """(router, gate) pairs, gate by gate from the fewest experts per token to the most (top-2, sparsemax, soft
    softmax): what the heap keeps of one variant's small tensors is then at most what the next one needs."""
    return [(r, g) for g in gates for r in routers]
