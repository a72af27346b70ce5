"""Typed, validated configuration read from params.yaml.

Everything is checked once, here, at the edge: a bad value raises ConfigError with one line
naming the key, the value and what is allowed. The stages only see the dataclasses below.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .moe.config import MoEConfig

TASKS = ("lm", "summarization", "classification")


class ConfigError(ValueError):
    """A bad value in params.yaml or on the command line."""


# ---------------------------------------------------------------- sections of params.yaml
@dataclass(frozen=True)
class GatePreset:
    norm: str
    top_k: int


@dataclass(frozen=True)
class MoEParams:
    """Shared by every MoE layer (see moe/config.py for what each key does)."""
    renormalize: bool = False
    attention_scaled: bool = True
    capacity_factor: float = 0.0
    capacity_policy: str = "weight"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    bias_update_rate: float = 0.0


@dataclass(frozen=True)
class DenseParams:
    """The dense baseline: one FFN of width top_k * expert d_ff, so it spends the same
    active FLOPs per token as a top-k MoE of preset `model`."""
    model: str = "e8"
    top_k: int = 2


@dataclass(frozen=True)
class ModelPreset:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int                     # expert FFN width (dense FFN width in non-MoE blocks)
    n_experts: int
    moe_every: int = 1            # MoE FFN in every moe_every-th block (0: none)
    dropout: float = 0.0
    activation: str = "gelu"
    pretrained: str | None = None  # HF name or local dir (summarization); None: from scratch


@dataclass(frozen=True)
class DataParams:
    source: str
    vocab_size: int = 2048
    seq_len: int = 64             # lm: tokens per training sequence; classification: max tokens
    max_source_len: int = 256     # summarization
    max_target_len: int = 32      # summarization
    max_records: int | None = None
    text_column: str = "text"
    document_column: str = "document"
    summary_column: str = "summary"
    label_column: str = "label"
    val_frac: float = 0.05
    test_frac: float = 0.05


@dataclass(frozen=True)
class TrainParams:
    steps: int
    batch_size: int
    lr: float
    grad_accum: int = 1
    weight_decay: float = 0.1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10
    checkpoint_every: int = 100


@dataclass(frozen=True)
class EvalParams:
    batch_size: int = 32
    max_batches: int | None = None
    samples: int = 3
    sample_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    num_beams: int = 1            # summarization: beam width (1: greedy)
    max_new_tokens: int = 32      # summarization: longest generated summary (tokens)
    no_repeat_ngram_size: int = 0  # summarization: forbid repeating any n-gram of this size (0: off)


@dataclass(frozen=True)
class TaskParams:
    data: DataParams
    models: dict[str, ModelPreset]
    train: TrainParams
    evaluate: EvalParams = field(default_factory=EvalParams)


@dataclass(frozen=True)
class LayerBenchParams:
    """The layer micro-benchmark: one MoE layer against a dense FFN of equal active FLOPs."""
    tokens: list[int] = field(default_factory=lambda: [512, 16384])
    d_model: int = 512
    d_ff: int = 1024              # per expert; the dense reference has top_k * d_ff
    n_experts: int = 16
    top_k: int = 2                # HF's Switch layer is top-1 and is compared at top-1 as well
    dtype: str = "auto"           # auto: bfloat16 on CUDA, float32 on CPU | float32 | bfloat16
    warmup: int = 2
    repeats: int = 10


@dataclass(frozen=True)
class BenchmarkParams:
    batch_size: int = 8
    warmup: int = 2
    repeats: int = 10             # timed repeats (>= 10): median and p90 are reported
    layer: LayerBenchParams = field(default_factory=LayerBenchParams)


@dataclass(frozen=True)
class Params:
    # one experiment (scalar keys; `dvc exp run -S router=attention`)
    task: str
    router: str
    norm: str
    top_k: int
    model: str
    seed: int
    # the study (lists; matrix stages)
    tasks: list[str]
    routers: list[str]
    gates: list[str]
    models: list[str]
    seeds: list[int]
    gate_presets: dict[str, GatePreset]
    moe: MoEParams
    dense: DenseParams
    benchmark: BenchmarkParams
    lm: TaskParams | None = None
    summarization: TaskParams | None = None
    classification: TaskParams | None = None

    def task_params(self, task: str) -> TaskParams:
        _check_choice("task", task, TASKS)
        section = getattr(self, task)
        if section is None:
            raise ConfigError(f"params.yaml: task {task!r} needs a top-level section `{task}:` (data, models, train)")
        return section


# ---------------------------------------------------------------- one resolved run
@dataclass(frozen=True)
class RunConfig:
    """Everything one training/evaluation run needs, fully resolved."""
    task: str
    name: str                     # variant name, e.g. attention-sparsemax-e16 or dense
    gating: str                   # router-gate, e.g. attention-sparsemax, or dense
    model: str                    # model-size preset name (for dense: the preset it matches)
    seed: int
    preset: ModelPreset
    moe: MoEConfig | None         # None: dense baseline
    dense_d_ff: int               # FFN width of non-MoE blocks
    data: DataParams
    train: TrainParams
    evaluate: EvalParams

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gate_name(params: Params, norm: str, top_k: int) -> str:
    for name, preset in params.gate_presets.items():
        if preset.norm == norm and preset.top_k == top_k:
            return name
    return f"{norm}-top{top_k}" if top_k else f"{norm}-soft"


def resolve_run(params: Params, *, task: str | None = None, router: str | None = None,
                gate: str | None = None, norm: str | None = None, top_k: int | None = None,
                model: str | None = None, seed: int | None = None, dense: bool = False) -> RunConfig:
    """Resolve one run. Unset arguments fall back to the scalar experiment keys of params.yaml."""
    task = task or params.task
    tp = params.task_params(task)
    seed = params.seed if seed is None else seed
    if dense:
        preset = _preset(tp, params.dense.model, task, "dense.model")
        return RunConfig(task, "dense", "dense", params.dense.model, seed, preset, None, params.dense.top_k * preset.d_ff,
                         tp.data, tp.train, tp.evaluate)
    router = router or params.router
    if gate is not None:
        _check_choice("gate", gate, tuple(params.gate_presets), key_hint="gate_presets")
        norm, top_k = params.gate_presets[gate].norm, params.gate_presets[gate].top_k
    norm = norm or params.norm
    top_k = params.top_k if top_k is None else top_k
    model = model or params.model
    preset = _preset(tp, model, task, "model")
    moe = MoEConfig(d_model=preset.d_model, d_ff=preset.d_ff, n_experts=preset.n_experts, router=router,
                    norm=norm, top_k=top_k, activation=preset.activation, **dataclasses.asdict(params.moe))
    try:
        moe.validate(where="params")
    except ValueError as err:
        raise ConfigError(f"params.yaml: {_params_key(str(err), task, model, gate)}") from None
    gating = f"{router}-{gate or gate_name(params, norm, top_k)}"
    return RunConfig(task, f"{gating}-{model}", gating, model, seed, preset, moe, preset.d_ff, tp.data, tp.train, tp.evaluate)


def _params_key(message: str, task: str, model: str, gate: str | None) -> str:
    """MoEConfig.validate says `params.<field>`; name the params.yaml key the value came from instead."""
    where = {"n_experts": f"{task}.models.{model}.n_experts", "activation": f"{task}.models.{model}.activation",
             "router": "router", "norm": "norm" if gate is None else f"gate_presets.{gate}.norm",
             "top_k": "top_k" if gate is None else f"gate_presets.{gate}.top_k"}
    field = message.split(" ", 1)[0].removeprefix("params.")
    return message.replace(f"params.{field}", where.get(field, f"moe.{field}"), 1)


def _preset(tp: TaskParams, model: str, task: str, key: str) -> ModelPreset:
    if model not in tp.models:
        raise ConfigError(f"params.yaml: {key} = {model!r} is not a model preset of task {task!r}; "
                          f"allowed: {', '.join(tp.models)} (define more under {task}.models)")
    return tp.models[model]


# ---------------------------------------------------------------- loading and checking
def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run moelab from the project root (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    params = build(Params, raw or {}, "")
    validate(params)
    return params


def validate(params: Params) -> None:
    from .moe.config import NORMALISERS, ROUTERS, CAPACITY_POLICIES
    _check_choice("task", params.task, TASKS)
    _check_choice("router", params.router, ROUTERS)
    _check_choice("norm", params.norm, NORMALISERS)
    for t in params.tasks:
        _check_choice("tasks", t, TASKS)
        params.task_params(t)
    for r in params.routers:
        _check_choice("routers", r, ROUTERS)
    for g in params.gates:
        _check_choice("gates", g, tuple(params.gate_presets), key_hint="gate_presets")
    for name, g in params.gate_presets.items():
        _check_choice(f"gate_presets.{name}.norm", g.norm, NORMALISERS)
        if g.top_k < 0:
            raise ConfigError(f"params.yaml: gate_presets.{name}.top_k = {g.top_k} is not allowed; allowed: 0 (soft) or k >= 1")
    _check_choice("moe.capacity_policy", params.moe.capacity_policy, CAPACITY_POLICIES)
    _check_benchmark(params.benchmark)
    # every combination the study and the single experiment will run must be valid
    resolve_run(params)
    for task in params.tasks:
        tp = params.task_params(task)
        for model in params.models:
            for gate in params.gates:
                resolve_run(params, task=task, gate=gate, model=model, router=params.routers[0])
        _preset(tp, params.dense.model, task, "dense.model")
        _check_positive(f"{task}.train", tp.train, ("steps", "batch_size", "grad_accum", "lr"))
        _check_positive(f"{task}.evaluate", tp.evaluate, ("batch_size", "num_beams", "max_new_tokens"))
        if tp.evaluate.no_repeat_ngram_size < 0:
            raise ConfigError(f"params.yaml: {task}.evaluate.no_repeat_ngram_size = {tp.evaluate.no_repeat_ngram_size!r} "
                              "is not allowed; allowed: 0 (off) or n >= 1")


def _check_benchmark(bp: BenchmarkParams) -> None:
    _check_positive("benchmark", bp, ("batch_size",))
    lb = bp.layer
    _check_positive("benchmark.layer", lb, ("d_model", "d_ff", "n_experts", "top_k"))
    for where, obj in (("benchmark", bp), ("benchmark.layer", lb)):
        if obj.repeats < 10:
            raise ConfigError(f"params.yaml: {where}.repeats = {obj.repeats!r} is not allowed; allowed: an integer >= 10 "
                              "(a median and a 90th percentile need them)")
        if obj.warmup < 0:
            raise ConfigError(f"params.yaml: {where}.warmup = {obj.warmup!r} is not allowed; allowed: an integer >= 0")
    if lb.top_k > lb.n_experts:
        raise ConfigError(f"params.yaml: benchmark.layer.top_k = {lb.top_k} is not allowed; allowed: 1..{lb.n_experts} "
                          "(benchmark.layer.n_experts)")
    for i, n in enumerate(lb.tokens):
        if n <= 0:
            raise ConfigError(f"params.yaml: benchmark.layer.tokens[{i}] = {n!r} is not allowed; allowed: an integer > 0")
    _check_choice("benchmark.layer.dtype", lb.dtype, ("auto", "float32", "bfloat16"))


def _check_positive(where: str, obj, keys) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"params.yaml: {where}.{key} = {getattr(obj, key)!r} is not allowed; allowed: a number > 0")


def _check_choice(key: str, value, allowed: tuple, key_hint: str | None = None) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        extra = f" (defined under {key_hint})" if key_hint else ""
        raise ConfigError(f"params.yaml: {key} = {value!r} is not allowed{did}; allowed: {', '.join(map(str, allowed))}{extra}")


def build(cls, data, path: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys, missing keys and wrong types."""
    where = path or "params.yaml (top level)"
    if not isinstance(data, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"params.yaml: unknown key {_join(path, key)!r}{did}; allowed keys here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params.yaml: missing key {_join(path, name)!r}")
    return cls(**values)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: {path} must be a mapping, got {value!r}")
        return {k: _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"params.yaml: {path} = {value!r} is not allowed; allowed: a non-empty list")
        return [_convert(it, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return _scalar(tp, value, path)


def _scalar(tp, value, path: str):
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"params.yaml: {path} = {value!r} has the wrong type; allowed: {tp.__name__}")
    return float(value) if tp is float else value
