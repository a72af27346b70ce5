"""Resolution: Params -> the RunConfig of one cell (task x router x gate x model size x seed, or a
dense baseline). A model gets a ModelConfig, the training loop a TrainConfig; nothing downstream
reads params.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..moe import InitConfig, MoEConfig, OptionError
from .load import check_name
from .schema import DataParams, EvalParams, ModelPreset, Params, TaskParams, TrainConfig

GATE_CORE = ("norm", "top_k")  # a gate preset's own keys; the rest are MoE option overrides


@dataclass(frozen=True)
class ModelConfig:
    """What a model is built from: sizes, the MoE layer (None: dense baseline), initialisation."""

    d_model: int
    n_layers: int
    n_heads: int
    dense_d_ff: int  # width of every dense FFN (non-MoE blocks; the dense baseline)
    moe: MoEConfig | None  # the MoE FFN (the task derives causal variants from it)
    moe_every: int = 1  # MoE FFN in blocks moe_every-1, 2*moe_every-1, ... (0: none)
    dropout: float = 0.0
    activation: str = "gelu"
    pretrained: str | None = None
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    router_from_checkpoint: bool = True  # pretrained: copy the checkpoint's linear router (False: moelab's init)

    def moe_block_indices(self) -> list[int]:
        if self.moe is None or self.moe_every <= 0:
            return []
        return [i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0]


@dataclass(frozen=True)
class RunConfig:
    """Everything one training/evaluation run needs, fully resolved."""

    task: str
    name: str  # variant name, e.g. attention-sparsemax-e16 or dense
    gating: str  # router-gate, e.g. attention-sparsemax, or dense
    preset: str  # model-size preset name (for dense: the preset it matches)
    seed: int
    model: ModelConfig
    data: DataParams
    train: TrainConfig
    evaluate: EvalParams

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- one cell
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
) -> RunConfig:
    """Resolve one run. Unset arguments fall back to the scalar experiment keys of params.yaml."""
    task = task or params.task
    section = task_params(params, task)
    seed = params.seed if seed is None else seed
    init = InitConfig(**dataclasses.asdict(params.init))
    if dense:
        preset = _preset(section, params.dense.model, task, "dense.model")
        model_cfg = _model_config(preset, None, params.dense.top_k * preset.d_ff, init)
        return _checked(
            RunConfig(
                task,
                "dense",
                "dense",
                params.dense.model,
                seed,
                model_cfg,
                section.data,
                section.train,
                section.evaluate,
            ),
            None,
        )
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
        _model_config(preset, moe, preset.d_ff, init),
        section.data,
        section.train,
        section.evaluate,
    )
    return _checked(run, where)


def _model_config(preset: ModelPreset, moe: MoEConfig | None, dense_d_ff: int, init: InitConfig) -> ModelConfig:
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
        init,
        preset.router_from_checkpoint,
    )


def _checked(run: RunConfig, where: _KeyMap | None) -> RunConfig:
    """Let the task validate the MoE layers it will build (e.g. causal ones) and its own settings."""
    from ..tasks import TASKS

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
    from ..tasks import TASKS

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
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        extra = f" (defined under {key_hint})" if key_hint else ""
        raise ConfigError(
            f"params.yaml: {key} = {value!r} is not allowed{did}; allowed: {', '.join(map(str, allowed))}{extra}"
        )


def _check_option_keys(where: str, options: dict, extra: tuple = ()) -> None:
    from ..moe import all_params

    known = [*extra, *all_params()]
    for key in options:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"params.yaml: unknown key '{where}.{key}'{did}; allowed keys here: {', '.join(known)} "
                "(each MoE option is declared by its component: `moelab check --list`)"
            )


# ---------------------------------------------------------------- the whole file
def study_cells(params: Params, tasks: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    """(task, router, gate, model) of every MoE variant of the study."""
    return [
        (t, r, g, m) for t in tasks or params.tasks for r in params.routers for g in params.gates for m in params.models
    ]


def validate(params: Params) -> None:
    """Cross-field checks; every cell the study and the one experiment will run is resolved once."""
    from ..moe.normalisers import NORMALISERS
    from ..moe.routers import ROUTERS
    from ..tasks import TASKS

    _check_choice("task", params.task, tuple(TASKS.names()))
    _check_choice("router", params.router, tuple(ROUTERS.names()))
    _check_choice("norm", params.norm, tuple(NORMALISERS.names()))
    for key in ("tasks", "routers", "gates", "models"):
        for i, name in enumerate(getattr(params, key)):
            check_name(f"{key}[{i}]", name)
    _check_option_keys("moe", params.moe)
    for name, gate in params.gate_presets.items():
        check_name(f"gate_presets.{name}", name)
        for core in GATE_CORE:
            if core not in gate:
                raise ConfigError(f"params.yaml: gate_presets.{name} needs `{core}:` (a gate is a normaliser + k)")
        _check_option_keys(
            f"gate_presets.{name}", {k: v for k, v in gate.items() if k not in GATE_CORE}, extra=GATE_CORE
        )
    for task, section in params.task_sections.items():
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
        TASKS.get(task).check_params(section, task)
    for t in params.tasks:
        _check_choice("tasks", t, tuple(TASKS.names()))
        task_params(params, t)
    for r in params.routers:
        _check_choice("routers", r, tuple(ROUTERS.names()))
    for g in params.gates:
        _check_choice("gates", g, tuple(params.gate_presets), key_hint="gate_presets")
    if len(set(params.seeds)) != len(params.seeds):
        raise ConfigError(f"params.yaml: seeds = {params.seeds} is not allowed; allowed: distinct seeds")
    resolve_run(params)
    for task, router, gate, model in study_cells(params):
        resolve_run(params, task=task, router=router, gate=gate, model=model)
    for task in params.tasks:
        resolve_run(params, task=task, dense=True)
    if params.benchmark.layer.top_k > params.benchmark.layer.n_experts:
        raise ConfigError(
            f"params.yaml: benchmark.layer.top_k = {params.benchmark.layer.top_k} is not allowed; "
            f"allowed: 1..{params.benchmark.layer.n_experts} (benchmark.layer.n_experts)"
        )
    _check_choice("benchmark.layer.dtype", params.benchmark.layer.dtype, ("auto", "float32", "bfloat16"))
