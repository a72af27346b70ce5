"""params.yaml -> validated Params -> the RunConfig of one run: a variant of the study (task x router x
gate x model size x seed), the dense baseline, or a base (the pretraining run a variant fine-tunes
from). A model gets a ModelConfig, the training loop a TrainConfig; nothing downstream reads params.yaml.

Above the tasks and the MoE layer (it reads their registries); config/ below it only parses. Every
check is here, once, before any stage does work: an unknown name, a MoE option its component refuses,
a causal model that would see the future, a data source that cannot be read — each one line naming
the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import ConfigError, ModelConfig, ModelPreset, Params, RunConfig, TaskParams, TaskSchema, read_yaml
from .config.load import build_params, check_name
from .errors import did_you_mean
from .moe import MoEConfig, OptionError

GATE_CORE = ("norm", "top_k")  # a gate preset's own keys; the rest are MoE option overrides
DENSE = "dense"  # the dense baseline's variant (and gating) name
BASE = "base"  # a base's variant name: base-<size> (base-dense: the dense baseline's base)


def task_schemas() -> dict[str, TaskSchema]:
    """Each registered task's typed sections (a task declares them: tasks/<task>.py)."""
    from .tasks import TASKS

    return {name: TaskSchema(cls.data_params, cls.eval_params) for name, cls in TASKS.classes.items()}


def parse_params(raw: dict) -> Params:
    """Type-check a params mapping (read_yaml) against the tasks' sections; no cross-field checks."""
    return build_params(raw, task_schemas())


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and validate params.yaml (every run the study and the experiment name is resolved once)."""
    params = parse_params(read_yaml(path))
    validate(params)
    return params


# ---------------------------------------------------------------- one run
def gate_name(params: Params, norm: str, top_k: int) -> str:
    """The gate preset with exactly this norm and k and no option overrides, or a derived name."""
    for name, preset in params.gate_presets.items():
        if preset.get("norm") == norm and preset.get("top_k") == top_k and set(preset) <= set(GATE_CORE):
            return name
    return f"{norm}-top{top_k}" if top_k else f"{norm}-soft"


def resolve_run(
    params: Params,
    *,
    task: str | None = None,
    router: str | None = None,
    gate: str | None = None,
    norm: str | None = None,
    top_k: int | None = None,
    model: str | None = None,
    seed: int | None = None,
    dense: bool = False,
    init_from: str | None = None,
) -> RunConfig:
    """Resolve one run of `<task>.train`. Unset arguments fall back to the scalar experiment keys of
    params.yaml; init_from: the base directory it fine-tunes from (None: from its own initialisation)."""
    task = task or params.task
    section = task_params(params, task)
    seed = params.seed if seed is None else seed
    if dense:
        return _checked(_dense_run(params, task, section, seed, section.train, DENSE, init_from), None)
    router = router or params.router
    overrides: dict[str, Any] = {}
    if gate is not None:
        _check_choice("gate", gate, tuple(params.gate_presets), key_hint="gate_presets")
        preset_gate = params.gate_presets[gate]
        norm, top_k = preset_gate["norm"], preset_gate["top_k"]
        overrides = {k: v for k, v in preset_gate.items() if k not in GATE_CORE}
    norm = norm or params.norm
    top_k = params.top_k if top_k is None else top_k
    model = model or params.model
    preset = _preset(section, model, task, "model")
    where = _KeyMap(task, model, gate, overrides)
    try:
        moe = MoEConfig(
            d_model=preset.d_model,
            d_ff=preset.d_ff,
            n_experts=preset.n_experts,
            router=router,
            norm=norm,
            top_k=top_k,
            activation=preset.activation,
            options={**params.moe, **overrides},
        )
    except OptionError as err:
        raise where.error(err) from None
    gating = f"{router}-{gate or gate_name(params, norm, top_k)}"
    run = RunConfig(
        task,
        f"{gating}-{model}",
        gating,
        model,
        seed,
        _model_config(preset, moe, preset.d_ff, params),
        section.data,
        section.train,
        section.evaluate,
        init_from,
    )
    return _checked(run, where)


def resolve_base(params: Params, task: str, size: str) -> RunConfig:
    """The pretraining run of the base of `task` at model size `size` (a preset, or `dense` for the dense
    baseline's base): params.base's router and gate (dense: the dense FFN), `<task>.pretrain`, seed base.seed."""
    section = task_params(params, task)
    if section.pretrain is None:
        raise ConfigError(f"params.yaml: {task}.pretrain is not set: task {task!r} has no base to pretrain")
    if size == DENSE:
        return _checked(_dense_run(params, task, section, params.base.seed, section.pretrain, f"{BASE}-{DENSE}"), None)
    run = resolve_run(params, task=task, router=params.base.router, gate=params.base.gate, model=size)
    return dataclasses.replace(run, name=f"{BASE}-{size}", seed=params.base.seed, train=section.pretrain)


def _dense_run(params: Params, task: str, section: TaskParams, seed: int, train, name: str, init_from=None):
    """The dense baseline: FFN width dense.top_k x d_ff of preset dense.model (the active FLOPs of top-k)."""
    preset = _preset(section, params.dense.model, task, "dense.model")
    model = _model_config(preset, None, params.dense.top_k * preset.d_ff, params)
    return RunConfig(
        task, name, DENSE, params.dense.model, seed, model, section.data, train, section.evaluate, init_from
    )


def _model_config(preset: ModelPreset, moe: MoEConfig | None, dense_d_ff: int, params: Params) -> ModelConfig:
    return ModelConfig(
        preset.d_model,
        preset.n_layers,
        preset.n_heads,
        dense_d_ff,
        moe,
        preset.moe_every,
        preset.dropout,
        preset.activation,
        preset.pretrained,
        params.init,
        preset.router_from_checkpoint,
    )


def _checked(run: RunConfig, where: _KeyMap | None) -> RunConfig:
    """Let the task validate the MoE layers it will build (e.g. causal ones) and its own settings."""
    from .tasks import TASKS

    try:
        TASKS.get(run.task).check_run(run)
    except OptionError as err:
        raise (where.error(err) if where else ConfigError(f"params.yaml: {err}")) from None
    return run


class _KeyMap:
    """Names the params.yaml key an MoE option error came from."""

    def __init__(self, task: str, model: str, gate: str | None, overrides: dict):
        self.task, self.model, self.gate, self.overrides = task, model, gate, overrides

    def key(self, field: str) -> str:
        sizes = {"n_experts", "activation", "d_model", "d_ff"}
        if field in sizes:
            return f"{self.task}.models.{self.model}.{field}"
        if field in GATE_CORE:
            return f"gate_presets.{self.gate}.{field}" if self.gate else field
        if field in ("router", "selection_rule"):
            return field
        if self.gate and field in self.overrides:
            return f"gate_presets.{self.gate}.{field}"
        return f"moe.{field}"

    def error(self, err: OptionError) -> ConfigError:
        where = f" (task {self.task})" if err.key not in ("router",) else ""
        return ConfigError(
            f"params.yaml: {self.key(err.key)} = {err.value!r} is not allowed{where}; allowed: {err.allowed}"
        )


def task_params(params: Params, task: str) -> TaskParams:
    from .tasks import TASKS

    _check_choice("task", task, tuple(TASKS.names()))
    section = params.task_sections.get(task)
    if section is None:
        raise ConfigError(f"params.yaml: task {task!r} needs a top-level section `{task}:` (data, models, train)")
    return section


def _preset(section: TaskParams, model: str, task: str, key: str) -> ModelPreset:
    if model not in section.models:
        raise ConfigError(
            f"params.yaml: {key} = {model!r} is not a model preset of task {task!r}; "
            f"allowed: {', '.join(section.models)} (define more under {task}.models)"
        )
    return section.models[model]


def _check_choice(key: str, value, allowed: tuple, key_hint: str | None = None) -> None:
    if value not in allowed:
        extra = f" (defined under {key_hint})" if key_hint else ""
        raise ConfigError(
            f"params.yaml: {key} = {value!r} is not allowed{did_you_mean(value, allowed)}; "
            f"allowed: {', '.join(map(str, allowed))}{extra}"
        )


def _check_option_keys(where: str, options: dict, extra: tuple = ()) -> None:
    from .moe import all_params

    known = [*extra, *all_params()]
    for key in options:
        if key not in known:
            raise ConfigError(
                f"params.yaml: unknown key '{where}.{key}'{did_you_mean(key, known)}; allowed keys here: "
                f"{', '.join(known)} (each MoE option is declared by its component: `moelab check --list`)"
            )


# ---------------------------------------------------------------- the whole file
def validate(params: Params) -> None:
    """Cross-field checks; every run the study and the one experiment will run is resolved once."""
    from .moe.normalisers import NORMALISERS
    from .moe.routers import ROUTERS
    from .tasks import TASKS

    _check_choice("task", params.task, tuple(TASKS.names()))
    _check_choice("router", params.router, tuple(ROUTERS.names()))
    _check_choice("norm", params.norm, tuple(NORMALISERS.names()))
    for key in ("tasks", "routers", "gates", "models"):
        for i, name in enumerate(getattr(params, key)):
            check_name(f"{key}[{i}]", name)
    _check_option_keys("moe", params.moe)
    _validate_gates(params)
    for task, section in params.task_sections.items():
        _validate_section(task, section)
    for t in params.tasks:
        _check_choice("tasks", t, tuple(TASKS.names()))
        task_params(params, t)
    for r in params.routers:
        _check_choice("routers", r, tuple(ROUTERS.names()))
    for g in params.gates:
        _check_choice("gates", g, tuple(params.gate_presets), key_hint="gate_presets")
    _check_choice("base.router", params.base.router, tuple(ROUTERS.names()))
    _check_choice("base.gate", params.base.gate, tuple(params.gate_presets), key_hint="gate_presets")
    for key in ("tasks", "routers", "gates", "models", "seeds"):
        values = getattr(params, key)
        if len(set(values)) != len(values):
            raise ConfigError(f"params.yaml: {key} = {values} is not allowed; allowed: distinct values")
    _resolve_everything(params)
    if params.benchmark.layer.top_k > params.benchmark.layer.n_experts:
        raise ConfigError(
            f"params.yaml: benchmark.layer.top_k = {params.benchmark.layer.top_k} is not allowed; "
            f"allowed: 1..{params.benchmark.layer.n_experts} (benchmark.layer.n_experts)"
        )
    _check_choice("benchmark.layer.dtype", params.benchmark.layer.dtype, ("auto", "float32", "bfloat16"))


def _validate_gates(params: Params) -> None:
    for name, gate in params.gate_presets.items():
        check_name(f"gate_presets.{name}", name)
        for core in GATE_CORE:
            if core not in gate:
                raise ConfigError(f"params.yaml: gate_presets.{name} needs `{core}:` (a gate is a normaliser + k)")
        _check_option_keys(
            f"gate_presets.{name}", {k: v for k, v in gate.items() if k not in GATE_CORE}, extra=GATE_CORE
        )


def _validate_section(task: str, section: TaskParams) -> None:
    from .data.corpora import check_source
    from .tasks import TASKS

    for name, preset in section.models.items():
        check_name(f"{task}.models.{name}", name)
        if preset.d_model % preset.n_heads:
            raise ConfigError(
                f"params.yaml: {task}.models.{name}.n_heads = {preset.n_heads} is not allowed; "
                f"allowed: a divisor of d_model = {preset.d_model}"
            )
    data = section.data
    if data.val_frac + data.test_frac >= 1:
        raise ConfigError(
            f"params.yaml: {task}.data.val_frac + test_frac = {data.val_frac + data.test_frac} "
            "is not allowed; allowed: < 1 (the training split needs documents)"
        )
    check_source(f"{task}.data.source", data.source)
    TASKS.get(task).check_params(section, task)


def _resolve_everything(params: Params) -> None:
    """Every run the pipeline will build: the experiment, each study variant and its base, the dense baseline."""
    experiment = resolve_run(params)
    from_base = task_params(params, params.task).pretrain is not None and not experiment.model.pretrained
    if from_base and (params.task not in params.tasks or params.model not in params.models):
        raise ConfigError(
            f"params.yaml: task = {params.task!r}, model = {params.model!r}: the experiment fine-tunes from "
            f"the study's base of its task and size, which the study does not train; allowed: a task of "
            f"`tasks` ({', '.join(params.tasks)}) and a size of `models` ({', '.join(params.models)})"
        )
    for task in params.tasks:
        for router in params.routers:
            for gate in params.gates:
                for model in params.models:
                    resolve_run(params, task=task, router=router, gate=gate, model=model)
        resolve_run(params, task=task, dense=True)
        if task_params(params, task).pretrain is not None:
            for size in [*params.models, DENSE]:
                resolve_base(params, task, size)
