"""claims/params.yaml -> typed claims, and each claim's cells resolved to RunConfigs.

A cell is a set of overrides of the root params.yaml (the base): router, norm, top_k, model, dense,
and the sections moe / init / evaluate merged key by key, in the order
defaults < the budget < the claim's `common` < the cell < `quick` (with --quick) or the pilot's
steps (a pilot with --steps). Resolution goes through the same code as every other run
(resolve.parse_params, resolve.resolve_run), so a claim's run is exactly what `moelab train` would
run with those params.

The budget is one block (`budget:`): the data every claim runs on (checked against the root
params' lm.data: the prepared data and the references are the root study's), the model shape every
claims preset shares, and the training recipe of every cell (steps, batch, learning-rate schedule).

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
from ..config.schema import allowed, at_least, positive
from ..resolve import parse_params, resolve_run

TASK = "lm"  # every claim is about a decoder LM on the bundled corpus
KINDS = ("difference", "equivalence", "non_inferiority", "trend", "variance_ratio")
DIRECTIONS = ("lower", "higher")
# claim: tests what the paper claims (its verdict is the claim's); manipulation: confirms that an
# intervention moves the quantity it optimises (reported apart, never "reproduced"); measurement:
# an effect reported with its interval and no verdict (e.g. step time)
ROLES = ("claim", "manipulation", "measurement")
ORIGINS = ("published", "lab")  # lab: this lab's own hypothesis (no published source claims it)
BUDGET_STATUS = ("placeholder", "set")
CELL_KEYS = ("router", "norm", "top_k", "model", "dense", "moe", "init", "evaluate", "pending")
MIN_SEEDS = 3  # an interval over seeds needs them (the quick profile and a pilot may use fewer)
MIN_PILOT_SEEDS = 2  # a paired SD needs two pairs

# per-seed values a part may test: key -> (label, unit). From eval.json, except max_violation_global
# (from eval.routing.json: MaxVio of the loads summed over the whole test split, per layer) and the
# training speed (the run's train metrics: wall seconds of training / steps, tokens / wall seconds).
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
    "train_step_s": ("training seconds per step", "s"),
    "train_tokens_per_s": ("training tokens per second", "tokens/s"),
}
QUALITY_METRICS = ("test_loss", "test_ppl", "val_loss")  # a part on these is judged in regime first


@dataclass(frozen=True)
class PublishedSpread:
    """A published run-to-run spread (variance_ratio parts): the standard deviations of cells a and b
    over n_a and n_b runs, as printed (rounded to +- rounding). verdicts.published_ratio_floor turns
    it into the smallest variance ratio the publication is consistent with."""

    std_a: float = positive()
    std_b: float = positive()
    n_a: int = at_least(2)
    n_b: int = at_least(2)
    rounding: float = allowed(0, default=0.0)


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
    role: str = "claim"  # ROLES
    # the practically relevant margin, when `margin` is wider: the margin the study can resolve (set
    # from the pilot before the main run; claims.md shows both)
    target_margin: float | None = positive(default=None)
    published: str = ""  # the paper's own numbers for this comparison (shown beside the effect)
    # the cells whose regime decides a quality part (default: all its cells); a cell the claim expects to be
    # much worse (e.g. an unstable initialisation) may be left out: its failing the bar is the effect itself
    regime_cells: list[str] = field(default_factory=list)
    absent_if_below: PublishedSpread | None = None  # variance_ratio: "effect absent at this scale"

    def cell_names(self) -> list[str]:
        return list(self.cells) if self.kind == "trend" else [self.a, self.b]


@dataclass(frozen=True)
class ClaimSpec:
    title: str
    source: str  # paper, arXiv id, section / table (or, origin lab: the related work)
    setting: str  # one line: what this study runs (the table's "setting here")
    seeds: list[int]
    cells: dict[str, dict[str, Any]]
    parts: dict[str, PartSpec]
    common: dict[str, Any] = field(default_factory=dict)
    flop_matched: bool = False  # every cell spends the same FFN FLOPs per token (checked)
    origin: str = "published"  # ORIGINS
    differs: str = ""  # what differs from the paper's setting, and why


@dataclass(frozen=True)
class QuickProfile:
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetSpec:
    """The single block the budget study (scale/) sets: data, model shape, training recipe."""

    status: str  # placeholder | set
    source: str = ""  # where the numbers come from
    data: dict[str, Any] = field(default_factory=dict)  # the root lm.data the claims run on (checked, not overridden)
    model: dict[str, Any] = field(default_factory=dict)  # shared by every preset of `models`
    train: dict[str, Any] = field(default_factory=dict)  # every cell's training (eval_every defaults to steps)


@dataclass(frozen=True)
class PilotSpec:
    """The pilot that measures each part's paired SD before the main run (claims/pilot/<claim>.json)."""

    seeds: list[int]
    steps: int | None = at_least(1, default=None)  # None: the budget's steps (the main run reuses the runs)


@dataclass(frozen=True)
class ClaimsParams:
    quality_margin: float = positive()
    budget: BudgetSpec
    level: float = allowed(0, 1, lo_open=True, hi_open=True, default=0.95)
    alpha: float = allowed(0, 0.5, lo_open=True, hi_open=True, default=0.05)
    familywise: str = "holm"  # holm | none: the claim parts' family-wise error control
    bar_role: str = "bar"  # the reference row (role) of references.json a quality part must beat
    defaults: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # presets (over budget.model) added to lm.models
    quick: QuickProfile | None = None
    pilot: PilotSpec | None = None
    claims: dict[str, ClaimSpec] = field(default_factory=dict)


def load_claims(path) -> ClaimsParams:
    """Read and check claims/params.yaml (names, kinds, roles, metrics, directions, margins, cells, budget)."""
    spec = build(ClaimsParams, read_yaml(path), "")
    _check_budget(spec.budget)
    if not spec.claims:
        raise ConfigError(f"{path}: `claims:` lists no claim")
    if spec.familywise not in ("holm", "none"):
        raise ConfigError(f"params.yaml: familywise = {spec.familywise!r} is not allowed; allowed: holm, none")
    if abs((1 - spec.level) - spec.alpha) > 1e-9:
        raise ConfigError(
            f"params.yaml: level = {spec.level} and alpha = {spec.alpha} do not match; allowed: level = 1 - alpha "
            "(every rule then decides at p < alpha: a two-sided test at the level interval, a one-sided at the "
            "1 - 2 alpha interval, the scale Holm adjusts on)"
        )
    if spec.pilot is not None and (len(set(spec.pilot.seeds)) != len(spec.pilot.seeds) or len(spec.pilot.seeds) < 2):
        raise ConfigError(f"params.yaml: pilot.seeds = {spec.pilot.seeds} is not allowed; allowed: >= 2 distinct seeds")
    _check_cell(spec.defaults, "defaults")
    if "train" in spec.defaults:
        raise ConfigError("params.yaml: defaults.train is not allowed; the training recipe is budget.train")
    for name, claim in spec.claims.items():
        check_name(f"claims.{name}", name)
        _check_claim(name, claim)
    return spec


def _check_budget(budget: BudgetSpec) -> None:
    if budget.status not in BUDGET_STATUS:
        raise ConfigError(
            f"params.yaml: budget.status = {budget.status!r} is not allowed; allowed: {', '.join(BUDGET_STATUS)}"
        )
    for key in ("steps", "batch_size"):
        if not isinstance(budget.train.get(key), int) or budget.train[key] < 1:
            raise ConfigError(f"params.yaml: budget.train.{key} = {budget.train.get(key)!r}; allowed: an integer >= 1")


def _check_claim(name: str, claim: ClaimSpec) -> None:
    where = f"claims.{name}"
    if len(set(claim.seeds)) != len(claim.seeds) or len(claim.seeds) < MIN_SEEDS:
        raise ConfigError(
            f"params.yaml: {where}.seeds = {claim.seeds} is not allowed; allowed: >= {MIN_SEEDS} distinct seeds"
        )
    if claim.origin not in ORIGINS:
        raise ConfigError(
            f"params.yaml: {where}.origin = {claim.origin!r} is not allowed; allowed: {', '.join(ORIGINS)}"
        )
    if not claim.source.strip():
        raise ConfigError(f"params.yaml: {where}.source is empty; cite the paper (title or authors, arXiv id, table)")
    _check_cell(claim.common, f"{where}.common")
    for cell, settings in claim.cells.items():
        check_name(f"{where}.cells.{cell}", cell)
        _check_cell(settings, f"{where}.cells.{cell}")
    for part_name, part in claim.parts.items():
        _check_part(f"{where}.parts.{part_name}", part, claim)
    if not any(part.role == "claim" for part in claim.parts.values()):
        raise ConfigError(f"params.yaml: {where} has no part with role claim: a claim's verdict combines those")


def _check_cell(settings: dict, where: str) -> None:
    for key in settings:
        if key not in CELL_KEYS and not (where == "defaults" and key == "train"):
            raise ConfigError(f"params.yaml: unknown key '{where}.{key}'; allowed keys here: {', '.join(CELL_KEYS)}")
    for key in ("moe", "init", "evaluate"):
        if not isinstance(settings.get(key, {}), dict):
            raise ConfigError(f"params.yaml: {where}.{key} must be a mapping of overrides")


def _check_part(where: str, part: PartSpec, claim: ClaimSpec) -> None:
    def bad(key: str, value, allowed_values: str):
        raise ConfigError(f"params.yaml: {where}.{key} = {value!r} is not allowed; allowed: {allowed_values}")

    if part.kind not in KINDS:
        bad("kind", part.kind, ", ".join(KINDS))
    if part.role not in ROLES:
        bad("role", part.role, ", ".join(ROLES))
    if part.metric not in METRICS:
        bad("metric", part.metric, ", ".join(METRICS))
    for cell in part.cell_names():
        if cell not in claim.cells:
            bad("cells" if part.kind == "trend" else "a/b", cell, f"a cell of the claim ({', '.join(claim.cells)})")
    if part.kind == "trend" and (len(part.cells) < 2 or not part.x):
        bad("cells", part.cells, ">= 2 cells and an `x` (the MoE setting on the x axis)")
    needs_direction = part.kind != "equivalence" and part.role != "measurement"
    if needs_direction and part.direction not in DIRECTIONS:
        bad("direction", part.direction, " or ".join(DIRECTIONS))
    if part.kind in ("equivalence", "non_inferiority") and part.margin is None:
        bad("margin", None, "a margin > 0 in the metric's unit")
    if part.target_margin is not None and (part.margin is None or part.target_margin > part.margin):
        bad("target_margin", part.target_margin, "a margin part's practically relevant margin, <= its margin")
    if any(cell not in part.cell_names() for cell in part.regime_cells):
        bad("regime_cells", part.regime_cells, f"cells of the part ({', '.join(part.cell_names())})")
    if part.absent_if_below is not None and part.kind != "variance_ratio":
        bad("absent_if_below", "...", "only on a variance_ratio part")


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
    profile: str  # full | quick | pilot
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


def budget_train(spec: ClaimsParams, steps: int | None = None) -> dict:
    """Every cell's training section: budget.train, validated once at the end (eval_every = steps
    unless set), with `steps` replacing the budget's (a shorter pilot)."""
    train = dict(spec.budget.train)
    if steps is not None:
        train["steps"] = steps
        train["eval_every"] = steps
        train["checkpoint_every"] = min(train.get("checkpoint_every", steps), steps)
        train["warmup_steps"] = min(train.get("warmup_steps", 0), max(steps - 1, 0))
    train.setdefault("eval_every", train["steps"])
    return train


def claims_models(spec: ClaimsParams) -> dict[str, dict]:
    """The claims' presets: budget.model (the shape every preset shares) with each preset's keys over it."""
    return {name: {**spec.budget.model, **preset} for name, preset in spec.models.items()}


def check_data(spec: ClaimsParams, base_raw: dict) -> None:
    """budget.data names the root study's LM data; refuse a claims run on other data (its prepared
    files and its references, the in-regime bar, are built from the root params' lm.data)."""
    root = base_raw.get(TASK, {}).get("data", {})
    for key, value in spec.budget.data.items():
        if root.get(key) != value:
            raise ConfigError(
                f"claims params: budget.data.{key} = {value!r}, but the root params' {TASK}.data.{key} = "
                f"{root.get(key)!r}: the claims run on the root study's prepared data and references; make them match"
            )


def plan_claim(
    spec: ClaimsParams,
    name: str,
    base_raw: dict,
    quick: bool = False,
    seeds: list[int] | None = None,
    steps: int | None = None,
    profile: str | None = None,
) -> ClaimPlan:
    """Resolve every cell x seed of claim `name` against the root params `base_raw` (read_yaml).
    quick: the quick profile; seeds / steps: a pilot's (profile 'pilot')."""
    if name not in spec.claims:
        raise ConfigError(f"claim {name!r} is not in the claims params; claims: {', '.join(spec.claims)}")
    claim = spec.claims[name]
    if quick and spec.quick is None:
        raise ConfigError("--quick needs a `quick:` section in the claims params")
    check_data(spec, base_raw)
    if seeds is None:
        seeds = list(spec.quick.seeds) if quick else list(claim.seeds)
    settings = cell_settings(spec, claim, quick, steps)
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
    models = claims_models(spec)
    cells = {
        cell_name: CellPlan(
            cell_name,
            cell,
            resolve_cell(base_raw, models, cell, seeds, f"claims.{name}.cells.{cell_name}")
            if cell_name in needed
            else {},
            missing[cell_name],
        )
        for cell_name, cell in settings.items()
    }
    plan = ClaimPlan(name, claim, list(seeds), profile or ("quick" if quick else "full"), cells)
    check_fairness(plan)
    return plan


def cell_settings(spec: ClaimsParams, claim: ClaimSpec, quick: bool, steps: int | None = None) -> dict[str, dict]:
    """Each cell's overrides: defaults < budget < the claim's common < the cell < the quick profile (with quick)."""
    profile = {"train": spec.quick.train, "evaluate": spec.quick.evaluate} if quick else {}
    shared = deep_merge(deep_merge(spec.defaults, {"train": budget_train(spec, steps)}), claim.common)
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
    """What the runs file echoes for a cell: the overrides asked for, the resolved run (seed 0's, minus the seed)."""
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
        "run_key": run_key(run),
        "training_tokens": tokens_per_run(run),
        "ffn_flops_per_token": ffn_flops_per_token(run),
    }
