"""claims/params.yaml -> typed claims, and each claim's cells resolved to RunConfigs.

A cell is a set of overrides of the root params.yaml (the base): router, norm, top_k, model, dense,
and the sections moe / init / train / evaluate merged key by key, in the order
defaults < the claim's `common` < the cell < `quick` (with --quick). Resolution goes through the
same code as every other run (resolve.parse_params, resolve.resolve_run), so a claim's
run is exactly what `moelab train` would run with those params.

Before anything trains, every claim is checked for fairness: all its cells see the same training
tokens (steps x batch x sequence length), and, where the claim says so, spend the same FFN FLOPs
per token (moelab/flops.py: dense FFN + experts; routers are excluded, they are what differs).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, RunConfig, read_yaml
from ..config.load import build, check_name
from ..config.schema import allowed, positive
from ..resolve import parse_params, resolve_run

TASK = "lm"  # every claim is about a decoder LM on the bundled corpus
KINDS = ("difference", "equivalence", "non_inferiority", "trend", "variance_ratio")
DIRECTIONS = ("lower", "higher")
CELL_KEYS = ("router", "norm", "top_k", "model", "dense", "moe", "init", "train", "evaluate", "pending")
MIN_SEEDS = 3  # an interval over seeds needs them (the quick profile may use fewer)

# per-seed values a part may test: key -> (label, unit). From eval.json, except max_violation_global
# (from eval.routing.json: MaxVio of the loads summed over the whole test split, per layer).
METRICS = {
    "test_loss": ("test loss", "nats"),
    "test_ppl": ("test perplexity", ""),
    "val_loss": ("validation loss", "nats"),
    "load_cv": ("expert-load CV", ""),
    "max_violation": ("MaxVio (per test batch, averaged)", ""),
    "max_violation_global": ("MaxVio (whole test split)", ""),
    "router_z": ("mean logsumexp^2 of router logits", ""),
    "dropped_fraction": ("dropped slot fraction", ""),
    "experts_per_token": ("experts per token", ""),
    "routing_entropy": ("routing entropy", "nats"),
}


@dataclass(frozen=True)
class PartSpec:
    """One test of a claim: which cells, which metric, the claimed direction or margin (kind: KINDS)."""

    kind: str
    metric: str
    label: str = ""
    a: str = ""  # difference, equivalence, non_inferiority, variance_ratio: the effect is a - b (or var a / var b)
    b: str = ""
    cells: list[str] = field(default_factory=list)  # trend: the cells, in order of x
    x: str = ""  # trend: the MoE setting on the x axis (log2 scale), e.g. n_experts
    direction: str = ""  # the claimed side: lower (a - b < 0, slope < 0, ratio < 1) or higher
    margin: float | None = positive(default=None)  # equivalence, non_inferiority: in the metric's unit

    def cell_names(self) -> list[str]:
        return list(self.cells) if self.kind == "trend" else [self.a, self.b]


@dataclass(frozen=True)
class ClaimSpec:
    title: str
    source: str
    setting: str  # one line: what this study runs (the table's "setting here")
    seeds: list[int]
    cells: dict[str, dict[str, Any]]
    parts: dict[str, PartSpec]
    common: dict[str, Any] = field(default_factory=dict)
    flop_matched: bool = False  # every cell spends the same FFN FLOPs per token (checked)


@dataclass(frozen=True)
class QuickProfile:
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimsParams:
    quality_margin: float = positive()
    level: float = allowed(0, 1, lo_open=True, hi_open=True, default=0.95)
    alpha: float = allowed(0, 0.5, lo_open=True, hi_open=True, default=0.05)
    defaults: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # presets added to the root lm.models
    quick: QuickProfile | None = None
    claims: dict[str, ClaimSpec] = field(default_factory=dict)


def load_claims(path) -> ClaimsParams:
    """Read and check claims/params.yaml (names, kinds, metrics, directions, margins, cell names)."""
    spec = build(ClaimsParams, read_yaml(path), "")
    if not spec.claims:
        raise ConfigError(f"{path}: `claims:` lists no claim")
    _check_cell(spec.defaults, "defaults")
    for name, claim in spec.claims.items():
        check_name(f"claims.{name}", name)
        _check_claim(name, claim)
    return spec


def _check_claim(name: str, claim: ClaimSpec) -> None:
    where = f"claims.{name}"
    if len(set(claim.seeds)) != len(claim.seeds) or len(claim.seeds) < MIN_SEEDS:
        raise ConfigError(
            f"params.yaml: {where}.seeds = {claim.seeds} is not allowed; allowed: >= {MIN_SEEDS} distinct seeds"
        )
    _check_cell(claim.common, f"{where}.common")
    for cell, settings in claim.cells.items():
        check_name(f"{where}.cells.{cell}", cell)
        _check_cell(settings, f"{where}.cells.{cell}")
    for part_name, part in claim.parts.items():
        _check_part(f"{where}.parts.{part_name}", part, claim)


def _check_cell(settings: dict, where: str) -> None:
    for key in settings:
        if key not in CELL_KEYS:
            raise ConfigError(f"params.yaml: unknown key '{where}.{key}'; allowed keys here: {', '.join(CELL_KEYS)}")
    for key in ("moe", "init", "train", "evaluate"):
        if not isinstance(settings.get(key, {}), dict):
            raise ConfigError(f"params.yaml: {where}.{key} must be a mapping of overrides")


def _check_part(where: str, part: PartSpec, claim: ClaimSpec) -> None:
    def bad(key: str, value, allowed_values: str):
        raise ConfigError(f"params.yaml: {where}.{key} = {value!r} is not allowed; allowed: {allowed_values}")

    if part.kind not in KINDS:
        bad("kind", part.kind, ", ".join(KINDS))
    if part.metric not in METRICS:
        bad("metric", part.metric, ", ".join(METRICS))
    for cell in part.cell_names():
        if cell not in claim.cells:
            bad("cells" if part.kind == "trend" else "a/b", cell, f"a cell of the claim ({', '.join(claim.cells)})")
    if part.kind == "trend" and (len(part.cells) < 2 or not part.x):
        bad("cells", part.cells, ">= 2 cells and an `x` (the MoE setting on the x axis)")
    if part.kind != "equivalence" and part.direction not in DIRECTIONS:
        bad("direction", part.direction, " or ".join(DIRECTIONS))
    if part.kind in ("equivalence", "non_inferiority") and part.margin is None:
        bad("margin", None, "a margin > 0 in the metric's unit")


# ---------------------------------------------------------------- resolution
@dataclass
class CellPlan:
    name: str
    settings: dict  # the merged overrides (what the claim asked for)
    runs: dict[int, RunConfig]  # seed -> run; empty when not run (it lacks a component, or no part can use it)
    missing: list[str]  # components this build lacks


@dataclass
class ClaimPlan:
    name: str
    spec: ClaimSpec
    seeds: list[int]
    profile: str  # full | quick
    cells: dict[str, CellPlan]

    def ran(self) -> dict[str, CellPlan]:
        return {name: cell for name, cell in self.cells.items() if cell.runs}


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of base with override's keys replaced; mappings are merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def plan_claim(spec: ClaimsParams, name: str, base_raw: dict, quick: bool = False) -> ClaimPlan:
    """Resolve every cell x seed of claim `name` against the root params `base_raw` (read_yaml)."""
    if name not in spec.claims:
        raise ConfigError(f"claim {name!r} is not in the claims params; claims: {', '.join(spec.claims)}")
    claim = spec.claims[name]
    if quick and spec.quick is None:
        raise ConfigError("--quick needs a `quick:` section in the claims params")
    seeds = list(spec.quick.seeds) if quick else list(claim.seeds)
    settings = cell_settings(spec, claim, quick)
    missing = {cell_name: missing_components(cell) for cell_name, cell in settings.items()}
    for cell_name, lacking in missing.items():
        if lacking and not settings[cell_name].get("pending"):
            raise ConfigError(
                f"params.yaml: claims.{name}.cells.{cell_name} needs {', '.join(lacking)}, which this build "
                "does not have; fix the name, or mark the cell `pending: <what it waits for>` to report it as not run"
            )
    # a cell runs when some part using it can run (every cell of that part is in this build)
    runnable = [part.cell_names() for part in claim.parts.values() if not any(missing[c] for c in part.cell_names())]
    needed = {cell for cells in runnable for cell in cells}
    cells = {
        cell_name: CellPlan(
            cell_name,
            cell,
            resolve_cell(base_raw, spec.models, cell, seeds, f"claims.{name}.cells.{cell_name}")
            if cell_name in needed
            else {},
            missing[cell_name],
        )
        for cell_name, cell in settings.items()
    }
    plan = ClaimPlan(name, claim, seeds, "quick" if quick else "full", cells)
    check_fairness(plan)
    return plan


def cell_settings(spec: ClaimsParams, claim: ClaimSpec, quick: bool) -> dict[str, dict]:
    """Each cell's overrides: defaults < the claim's common < the cell < the quick profile (with quick)."""
    profile = {"train": spec.quick.train, "evaluate": spec.quick.evaluate} if quick else {}
    shared = deep_merge(spec.defaults, claim.common)
    return {name: deep_merge(deep_merge(shared, cell), profile) for name, cell in claim.cells.items()}


def missing_components(settings: dict) -> list[str]:
    """The router, normaliser, MoE options and option values a cell names that are not registered."""
    if settings.get("dense"):
        return []
    from ..moe import all_params
    from ..moe.capacity import CAPACITY_POLICIES
    from ..moe.experts import EXPERTS
    from ..moe.normalisers import NORMALISERS
    from ..moe.routers import ROUTERS
    from ..moe.selection import SELECTIONS

    missing = []
    for key, registry in (("router", ROUTERS), ("norm", NORMALISERS)):
        if key in settings and settings[key] not in registry.classes:
            missing.append(f"{key} {settings[key]!r}")
    options = settings.get("moe", {})
    known = all_params()
    missing += [f"MoE option {key!r}" for key in options if key not in known]
    for key, registry in (("selection", SELECTIONS), ("expert", EXPERTS), ("capacity_policy", CAPACITY_POLICIES)):
        if key in options and options[key] not in registry.classes:
            missing.append(f"{key} {options[key]!r}")
    return missing


def resolve_cell(base_raw: dict, models: dict, settings: dict, seeds: list[int], where: str) -> dict[int, RunConfig]:
    """The RunConfig of each seed: the root params with this cell's overrides, resolved as `moelab train` would."""
    raw = copy.deepcopy(base_raw)
    section = raw.setdefault(TASK, {})
    section["models"] = {**section.get("models", {}), **models}
    for key in ("train", "evaluate"):
        section[key] = {**section.get(key, {}), **settings.get(key, {})}
    for key in ("moe", "init"):
        raw[key] = {**raw.get(key, {}), **settings.get(key, {})}
    dense = bool(settings.get("dense"))
    if dense:  # the dense baseline: FFN width top_k x d_ff of the cell's model
        raw["dense"] = {"model": settings["model"], "top_k": settings["top_k"]}
    try:
        params = parse_params(raw)
        preset = params.task_sections[TASK].models[settings["model"]]
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except KeyError:
        raise ConfigError(
            f"params.yaml: {where}.model = {settings.get('model')!r} is not a preset of lm.models or `models`"
        ) from None
    if preset.d_model % preset.n_heads:
        raise ConfigError(f"params.yaml: {where}: model {settings['model']!r} has d_model not divisible by n_heads")
    cell = {k: settings[k] for k in ("router", "norm", "top_k", "model") if k in settings and not dense}
    try:
        return {seed: resolve_run(params, task=TASK, seed=seed, dense=dense, **cell) for seed in seeds}
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


# ---------------------------------------------------------------- fairness
def tokens_per_run(run: RunConfig) -> int:
    """Training tokens a run sees: steps x batch x accumulation x sequence length (LM windows: no padding)."""
    t = run.train
    return t.steps * t.batch_size * t.grad_accum * run.data.seq_len


def ffn_flops_per_token(run: RunConfig) -> float:
    """Forward FFN FLOPs per token (dense FFNs + the k active experts), the quantity FLOP-matched cells share."""
    from ..flops import decoder_flops_per_token

    flops = decoder_flops_per_token(run.model, run.data.vocab_size, run.data.seq_len)
    return flops["dense_ffn"] + flops["experts"]


def run_key(run: RunConfig) -> str:
    """A name for what decides a run's weights (its config minus the seed and the evaluate section):
    the variant name and a hash. Runs with the same key and seed train to the same weights."""
    from ..checkpoint import config_fingerprint

    weights = {k: v for k, v in run.to_dict().items() if k not in ("seed", "evaluate")}
    return f"{run.name}-{hashlib.sha256(config_fingerprint(weights).encode()).hexdigest()[:12]}"


def check_fairness(plan: ClaimPlan) -> None:
    """Refuse a claim with two identical cells, or whose cells see different training tokens, or,
    when it is FLOP-matched, spend different FFN FLOPs per token."""
    first = {name: next(iter(cell.runs.values())) for name, cell in plan.ran().items()}
    keys: dict[str, str] = {}
    for name, run in first.items():
        if run_key(run) in keys:
            raise ConfigError(f"claims.{plan.name}: cells {keys[run_key(run)]} and {name} are the same run")
        keys[run_key(run)] = name
    tokens = {name: tokens_per_run(run) for name, run in first.items()}
    if len(set(tokens.values())) > 1:
        raise ConfigError(
            f"claims.{plan.name}: cells see different training tokens {tokens}: a claim compares at equal tokens"
        )
    if plan.spec.flop_matched:
        flops = {name: ffn_flops_per_token(run) for name, run in first.items()}
        if len(set(flops.values())) > 1:
            raise ConfigError(
                f"claims.{plan.name}: flop_matched, but the cells' FFN FLOPs per token differ {flops}; "
                "change the cells' sizes / top_k, or drop flop_matched"
            )


def cell_record(cell: CellPlan) -> dict:
    """What claims.json echoes for a cell: the overrides asked for, and the resolved run (seed 0's, minus the seed)."""
    record: dict = {"settings": cell.settings}
    if cell.missing:
        record["missing"] = cell.missing
        record["not_run"] = f"needs {', '.join(cell.missing)}, not in this build (pending: {cell.settings['pending']})"
        return record
    if not cell.runs:
        record["not_run"] = "every part that uses it waits for another cell"
        return record
    run = next(iter(cell.runs.values()))
    resolved = {k: v for k, v in dataclasses.asdict(run).items() if k not in ("seed", "data")}
    return {
        **record,
        "resolved": resolved,
        "training_tokens": tokens_per_run(run),
        "ffn_flops_per_token": ffn_flops_per_token(run),
    }
