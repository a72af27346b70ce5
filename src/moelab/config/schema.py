"""The sections of params.yaml as typed dataclasses. Every numeric field declares its allowed range
(`allowed(...)` metadata), which the loader checks once, at the edge: a bad value is one line naming
the key, the value and what is allowed. Task-specific data/evaluate fields live in each task's file
(subclasses of DataParams / EvalParams below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # names that end up in paths and shell commands


@dataclass(frozen=True)
class Allowed:
    """An allowed range: lo <= v (or lo < v), v <= hi (or v < hi); finite numbers only."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def problem(self, value) -> str | None:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        noun = "an integer" if isinstance(value, int) else "a finite number"
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        return None if ok else self.describe(noun)

    def describe(self, noun: str = "a finite number") -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        text = f"{noun} " + " and ".join(parts) if parts else noun
        return text + (f" ({self.note})" if self.note else "")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def allowed(lo=None, hi=None, *, lo_open=False, hi_open=False, note="", default: Any = ..., factory=None):
    """A dataclass field with an allowed range (and optionally a default)."""
    meta = {"allowed": Allowed(lo, hi, lo_open, hi_open, note)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(metadata=meta) if default is ... else field(default=default, metadata=meta)


def at_least(n, default: Any = ..., note=""):
    return allowed(n, default=default, note=note)


def positive(default: Any = ..., note=""):
    return allowed(0, lo_open=True, default=default, note=note)


# ---------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelPreset:
    """A model size of a task (`<task>.models.<name>`)."""

    d_model: int = at_least(1)
    n_layers: int = at_least(1)
    n_heads: int = at_least(1)
    d_ff: int = at_least(1, note="expert FFN width; dense FFN width in non-MoE blocks")
    n_experts: int = at_least(1)
    moe_every: int = at_least(0, default=1, note="MoE FFN in every moe_every-th block; 0: none")
    dropout: float = allowed(0, 1, hi_open=True, default=0.0)
    activation: str = "gelu"
    pretrained: str | None = None  # HF name or local dir (summarization); None: from scratch
    router_from_checkpoint: bool = True  # pretrained, linear router: start from the checkpoint's router (false: fresh)


@dataclass(frozen=True)
class InitParams:
    """Switch init (truncated normal, std = sqrt(scale / fan_in)); see moe/init.py."""

    ffn_scale: float = positive(default=0.1)
    router_scale: float = positive(default=0.1)
    projection_scale: float = positive(default=0.1)
    embedding_std: float = positive(default=0.02)


@dataclass(frozen=True)
class BaseParams:
    """The shared base of each task x model size (SparTMoE's protocol: a pretrained Switch checkpoint whose
    routers are replaced): one MoE model per size trained with this router and gate, once, by the
    `pretrain` stage; every variant (and the dense baseline, from a dense base) fine-tunes from it with
    fresh routing."""

    router: str = "linear"
    gate: str = "softmax-top2"
    seed: int = allowed(0, 2**32 - 1, default=0, note="the base's initialisation and data order")


@dataclass(frozen=True)
class DenseParams:
    """The dense baseline: one FFN of width top_k * expert d_ff, so it spends the same active FLOPs
    per token as a top-k MoE of preset `model`."""

    model: str = "e8"
    top_k: int = at_least(1, default=2)


# ---------------------------------------------------------------- data / train / evaluate
@dataclass(frozen=True)
class DataParams:
    """Shared by every task; each task subclasses it with its own columns and lengths."""

    source: str = ""
    vocab_size: int = at_least(16, default=2048)
    max_records: int | None = at_least(1, default=None)
    val_frac: float = allowed(0, 1, lo_open=True, hi_open=True, default=0.05)
    test_frac: float = allowed(0, 1, lo_open=True, hi_open=True, default=0.05)


@dataclass(frozen=True)
class TrainConfig:
    """What the training loop reads (`<task>.train`)."""

    steps: int = at_least(1)
    batch_size: int = at_least(1)
    lr: float = positive()
    grad_accum: int = at_least(1, default=1)
    weight_decay: float = at_least(0, default=0.1)
    warmup_steps: int = at_least(0, default=0)
    min_lr_ratio: float = allowed(0, 1, default=0.1)
    grad_clip: float = positive(default=1.0, note="max gradient norm")
    eval_every: int = at_least(1, default=100)
    eval_batches: int = at_least(1, default=10)
    checkpoint_every: int = at_least(1, default=100)


@dataclass(frozen=True)
class EvalParams:
    """Shared by every task; each task subclasses it with its own decoding/sampling fields."""

    batch_size: int = at_least(1, default=32)
    max_batches: int | None = at_least(1, default=None, note="null: the whole split")
    samples: int = at_least(0, default=3)


@dataclass(frozen=True)
class TaskParams:
    data: DataParams
    models: dict[str, ModelPreset]
    train: TrainConfig  # each variant's training: the fine-tune from the base (from scratch without one)
    evaluate: EvalParams
    pretrain: TrainConfig | None = None  # the base's training (None: no base, every variant trains from scratch)


# ---------------------------------------------------------------- benchmark
@dataclass(frozen=True)
class LayerBenchParams:
    """The layer micro-benchmark: one MoE layer against a dense FFN of equal active FLOPs."""

    tokens: list[int] = field(default_factory=lambda: [512, 16384], metadata={"item_allowed": Allowed(1)})
    d_model: int = at_least(1, default=512)
    d_ff: int = at_least(1, default=1024)  # per expert; the dense reference has top_k * d_ff
    n_experts: int = at_least(1, default=16)
    top_k: int = at_least(1, default=2)  # HF's Switch layer is top-1 and is compared at top-1 as well
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU | float32 | bfloat16
    warmup: int = at_least(0, default=2)
    repeats: int = at_least(10, default=10, note="a median and a 90th percentile need them")


@dataclass(frozen=True)
class BenchmarkParams:
    batch_size: int = at_least(1, default=8)
    warmup: int = at_least(0, default=2)
    repeats: int = at_least(10, default=10, note="a median and a 90th percentile need them")
    layer: LayerBenchParams = field(default_factory=LayerBenchParams)


# ---------------------------------------------------------------- the whole file
SEED_RANGE = allowed(0, 2**32 - 1, note="a 32-bit unsigned integer")


@dataclass(frozen=True)
class Params:
    # one experiment (scalar keys; `dvc exp run -S router=attention`)
    task: str
    router: str
    norm: str
    model: str
    top_k: int = at_least(0, note="0: soft routing, k >= 1: top-k")
    seed: int = SEED_RANGE
    # the study (lists; matrix stages)
    tasks: list[str] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list, metadata={"item_allowed": SEED_RANGE.metadata["allowed"]})
    gate_presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # norm, top_k + MoE option overrides
    moe: dict[str, Any] = field(default_factory=dict)  # MoE options (moe/config.py)
    init: InitParams = field(default_factory=InitParams)
    dense: DenseParams = field(default_factory=DenseParams)
    base: BaseParams = field(default_factory=BaseParams)
    benchmark: BenchmarkParams = field(default_factory=BenchmarkParams)
    task_sections: dict[str, TaskParams] = field(default_factory=dict)  # `lm:`, `summarization:`, ...

    def __getattr__(self, name: str) -> TaskParams:
        """params.lm, params.summarization, ...: a task's section."""
        sections = self.__dict__.get("task_sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"params.yaml has no section {name!r}")
