"""What the report reads, as one TaskReport per task of params.yaml: exactly the variants
(study.variants) and seeds (params.yaml `seeds`) params.yaml asks for, at the paths study.run_paths
gives, never a glob, so the runs of a variant, seed or task since removed from params.yaml that are
still on disk are never averaged in.

Inputs (study.py's layout; --study, --bench and --base move a root, e.g. for a copy of the tree):
  metrics/study/<task>/<variant>/eval/s<seed>.json   required: quality, cost, routing summary
      .meta.json     required: the resolved run it was produced with, which must equal today's
      .routing.json  required: per MoE layer detail (the dead-experts flag, the expert-load figure)
  metrics/study/<task>/<variant>/train/s<seed>.json  wall_s, where there
  metrics/study/<task>/<variant>/train/live/s<seed>/ DVCLive loss curves, where there
  metrics/study/<task>/references.json               required: the task's references, each with a role
  metrics/bench/<task>/<variant>.json (+ .meta.json) forward_ms, where there and of the same config
  study.base_paths(task, size).train (under metrics/base)  the bases' pretraining, where there

A requested run that is missing, unreadable or produced by another config stops the report with one
DataError line naming the file and the `dvc repro` target that writes it: a table over whatever
happens to be there would look complete and not be.

Which quality metrics a task has, which is its headline and what its test split is counted in are
read from the task's class (moelab.tasks.TASKS: `metrics`, `count_key`), never from a list here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import study as layout  # the study's matrix and paths (moelab/study.py)
from ..config import Params, RunConfig
from ..errors import DataError
from ..io import meta_path, read_json
from ..resolve import BASE
from ..stats import mean_interval
from ..study import Variant

ROLES = ("trivial", "bar", "context")
BAR_NAMES = re.compile(r"kn-bigram|lead-\d+-val|bow-logreg")  # the classical bars, until references.json says

# run flags (issue 19.4): a run whose number describes a broken model, not a gating's quality
ONE_CLASS_SHARE = 0.99  # classification: this share of test predictions or more is the most predicted class
DEAD_SHARE = 0.1  # an expert is dead below DEAD_SHARE / E of its layer's tokens ...
DEAD_LAYER_FRACTION = 0.5  # ... and a layer has dead experts when more than half of them are
DEGENERATE_FRACTION = 0.5  # summarisation: more than half the generated summaries degenerate


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool | None  # None: a description, not ranked
    source: str = "eval"  # eval (eval/s<seed>.json) | train (train/s<seed>.json) | bench (per variant)


# routing and cost, the same for every task (the quality columns come from the task's `metrics`);
# load CV and the routing entropy are not ranked: what is good depends on the gate type
RUN_COLUMNS = (
    Column("experts_per_token", "experts/token", None),
    Column("flops_per_token", "FLOPs/token", False),
    Column("forward_ms", "forward ms", False, "bench"),
    Column("load_cv", "load CV", None),
    Column("routing_entropy_ratio", "entropy / ln E", None),
    Column("dropped_fraction", "dropped", False),
    Column("wall_s", "train s", False, "train"),
)


def task_columns(task: str) -> tuple[list[Column], Column]:
    """The task's quality columns on the test split (headline first) and its test-size column."""
    from ..tasks import TASKS

    cls = TASKS.get(task, "task")
    quality = [Column(f"test_{m.key}", m.label, m.higher_is_better) for m in cls.metrics]
    return quality, Column(f"test_{cls.count_key}", f"n test ({cls.count_key})", None)


def describe(values: list[float]) -> dict:
    """mean, sample std, half-width of the exact 95% Student-t interval (None for n = 1), n."""
    interval = mean_interval(values)
    return {"mean": interval.mean, "std": interval.std, "ci95": interval.half_width, "n": interval.n}


@dataclass(frozen=True)
class Roots:
    """Where the study's, the benchmark's and the bases' metrics trees are (default: study.py's)."""

    study: Path = layout.STUDY
    bench: Path = layout.METRICS / "bench"
    base: Path = layout.METRICS / BASE

    def study_file(self, path: Path) -> Path:
        return Path(self.study) / path.relative_to(layout.STUDY)

    def base_file(self, path: Path) -> Path:
        return Path(self.base) / path.relative_to(layout.METRICS / BASE)


@dataclass(frozen=True)
class Run:
    """One requested run (a variant at one seed) as the report uses it."""

    variant: Variant
    seed: int
    values: dict[str, float]  # the numbers of eval/s<seed>.json (+ wall_s of train/s<seed>.json)
    layers: list[dict]  # .routing.json `layers`: one dict per MoE layer
    specialisation: dict  # .routing.json `specialisation` (empty: none)
    flags: tuple[str, ...]  # why its numbers are left out of the variant's aggregates (none: used)
    live: Path  # its DVCLive directory (loss curves)
    sparse: bool  # its normaliser puts exact zeros on some experts


# ------------------------------------------------------------------ flags
def layer_label(module: str | None, position: int) -> str:
    """'encoder 1' / 'decoder 1' for the summariser's layers (hf.encoder.block.1...), 'layer i' for the
    others (blocks.i.ffn); the MoE layer's position where the module name says nothing."""
    parts = (module or "").split(".")
    index = next((b for a, b in zip(parts, parts[1:]) if a in ("block", "blocks") and b.isdigit()), None)
    side = next((p for p in parts if p in ("encoder", "decoder")), None)
    if side:
        return f"{side} {index}" if index is not None else side
    return f"layer {index if index is not None else position}"


def dead_expert_layers(layers: list[dict]) -> list[str]:
    """The MoE layers in which more than half the experts computed fewer than 1/(10 E) of the tokens."""
    dead = []
    for i, layer in enumerate(layers):
        shares = layer.get("expert_share") or []
        below = sum(share < DEAD_SHARE / len(shares) for share in shares)
        if shares and below > DEAD_LAYER_FRACTION * len(shares):
            dead.append(layer_label(layer.get("module"), i))
    return dead


def run_flags(values: dict[str, float], layers: list[dict]) -> tuple[str, ...]:
    """one class (classification), dead experts (any MoE), degenerate outputs (summarisation), by the
    keys the run's eval JSON has, not by task name."""
    flags = []
    if values.get("test_top_class_share", 0.0) >= ONE_CLASS_SHARE:
        flags.append("one class")
    dead = dead_expert_layers(layers)
    if dead:
        flags.append(f"dead experts ({', '.join(dead)})")
    if values.get("test_degenerate_fraction", 0.0) > DEGENERATE_FRACTION:
        flags.append("degenerate outputs")
    return tuple(flags)


# ------------------------------------------------------------------ references
def reference_role(name: str, entry: dict) -> str:
    """The entry's "role"; where it has none: trivial when it says "trivial": true, bar for the classical
    bars (kn-bigram, lead-<N>-val, bow-logreg), context otherwise."""
    role = entry.get("role")
    if role is not None:
        return role
    if entry.get("trivial") is True:
        return "trivial"
    return "bar" if BAR_NAMES.fullmatch(name) else "context"


def read_references(roots: Roots, task: str) -> dict[str, dict]:
    """references.json: name -> {"description", "role", test_<metric>: value, ...}."""
    path = roots.study_file(layout.references_path(task))
    redo = f"re-run `dvc repro study/dvc.yaml:references@{task}`"
    if not path.exists():
        raise DataError(f"{path} is missing: run `dvc repro study/dvc.yaml:references@{task}`")
    out = {}
    for name, entry in read_json(path, redo).items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: reference {name!r} is not an object: {redo}")
        role = reference_role(name, entry)
        if role not in ROLES:
            raise DataError(f"{path}: reference {name!r} has role {role!r}; allowed: {', '.join(ROLES)}: {redo}")
        tests = {k: v for k, v in numbers(entry).items() if k.startswith("test_")}
        out[name] = {"description": str(entry.get("description", "")), "role": role, **tests}
    return out


# ------------------------------------------------------------------ one run
def numbers(record: dict) -> dict[str, float]:
    """The numeric entries of a JSON object (a bool or None is not a number)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def stage_of(variant: Variant, kind: str = "evaluate") -> str:
    """The `dvc repro` target that writes a variant's eval (kind "evaluate") or train ("train") files."""
    name = f"{kind}-dense@{variant.task}" if variant.dense else f"{kind}@{variant.task}-{variant.name}"
    return f"study/dvc.yaml:{name}"


def as_json(config: dict) -> dict:
    """A config as its .meta.json holds it (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(config, default=str))


_ABSENT = object()


def config_differences(recorded, current, prefix: str = "") -> list[str]:
    """'key: <on disk> on disk, <now> in params.yaml' for each leaf where two configs differ."""
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        if recorded == current:
            return []
        shown = ["absent" if v is _ABSENT else json.dumps(v) for v in (recorded, current)]
        return [f"{prefix.rstrip('.')}: {shown[0]} on disk, {shown[1]} in params.yaml"]
    out = []
    for key in sorted(set(recorded) | set(current)):
        out += config_differences(recorded.get(key, _ABSENT), current.get(key, _ABSENT), f"{prefix}{key}.")
    return out


def check_config(eval_path: Path, run: RunConfig, variant: Variant) -> dict:
    """The run config eval_path's .meta.json records, refused unless it equals the run params.yaml resolves
    to today: the whole RunConfig (task, name, gating, preset, seed, model, data, train, evaluate,
    init_from). Each of those can change a number in the table (train: the model evaluated; evaluate:
    the test set's size, beams), and each is a dependency of the evaluate stage or of the training it
    reads, so `dvc repro` re-runs exactly the runs this refuses."""
    meta, redo = meta_path(eval_path), f"re-run `dvc repro {stage_of(variant)}`"
    if not meta.exists():
        raise DataError(f"{meta} is missing (what {eval_path.name} was produced with): {redo}")
    recorded = read_json(meta, redo).get("config")
    differences = config_differences(recorded if isinstance(recorded, dict) else {}, as_json(run.to_dict()))
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise DataError(
            f"{eval_path} was produced by another config: re-run dvc repro "
            f"(`dvc repro {stage_of(variant)}`); differs in {'; '.join(differences[:3])}{more}"
        )
    return recorded


def is_soft(config: dict) -> bool:
    """Soft routing with a dense normaliser: top_k = 0 and a normaliser that gives every expert a
    positive weight (softmax), so every expert computes every token and the load is uniform by
    construction. Decided from the run config, never from the measured load."""
    top_k = ((config.get("model") or {}).get("moe") or {}).get("top_k")
    return top_k == 0 and normaliser_sparse(config) is False


def normaliser_sparse(config: dict) -> bool | None:
    """Whether the run's normaliser puts exactly zero weight on some experts (the registry's `sparse`;
    None: a dense run or an unknown normaliser)."""
    from ..moe.normalisers import NORMALISERS

    norm = NORMALISERS.classes.get(((config.get("model") or {}).get("moe") or {}).get("norm"))
    return None if norm is None else norm.sparse


def read_run(roots: Roots, variant: Variant, run: RunConfig) -> tuple[Run, dict]:
    """One requested run and the config it was produced with (checked against `run`)."""
    paths = layout.run_paths(variant, run.seed)
    eval_path = roots.study_file(paths.eval)
    redo = f"re-run `dvc repro {stage_of(variant)}`"
    values = numbers(read_json(eval_path, redo))
    config = check_config(eval_path, run, variant)
    routing_path = roots.study_file(paths.routing)
    if not routing_path.exists():
        raise DataError(f"{routing_path} is missing (the routing detail of {eval_path.name}): {redo}")
    routing = read_json(routing_path, redo)
    train_path = roots.study_file(paths.train)
    if train_path.exists():
        trained = read_json(train_path, f"re-run `dvc repro {stage_of(variant, 'train')}`")
        values |= {k: v for k, v in numbers(trained).items() if k == "wall_s"}
    layers = [layer for layer in routing.get("layers") or [] if isinstance(layer, dict)]
    return Run(
        variant,
        run.seed,
        values,
        layers,
        routing.get("specialisation") or {},
        run_flags(values, layers),
        roots.study_file(paths.live),
        normaliser_sparse(config) is True,
    ), config


def missing_runs(roots: Roots, params: Params) -> list[tuple[Path, Variant]]:
    """(eval JSON, variant) of every requested run whose eval JSON does not exist, in params.yaml order."""
    requested = [
        (roots.study_file(layout.run_paths(variant, seed).eval), variant)
        for task in params.tasks
        for variant in layout.variants(params, task)
        for seed in params.seeds
    ]
    return [(path, variant) for path, variant in requested if not path.exists()]


def missing_error(missing: list[tuple[Path, Variant]]) -> DataError:
    """One line: the first missing run's file and the stage that writes it, and how many more are missing."""
    path, variant = missing[0]
    more = f" ({len(missing) - 1} more requested runs are missing too)" if len(missing) > 1 else ""
    return DataError(f"{path} is missing: run `dvc repro {stage_of(variant)}`{more}")


# ------------------------------------------------------------------ the benchmark
BENCH_MUST_MATCH = ("task", "gating", "preset", "model", "data")  # what a latency depends on


def read_bench(roots: Roots, variant: Variant, config: dict) -> tuple[dict[str, float], bool]:
    """(forward_ms of <bench>/<task>/<variant>.json, whether it measured another config). Its only source."""
    path = Path(roots.bench) / variant.task / f"{variant.name}.json"
    if not path.exists():
        return {}, False
    meta = meta_path(path)
    bench_config = read_json(meta).get("config", {}) if meta.exists() else {}
    if any(bench_config.get(k) != config.get(k) for k in BENCH_MUST_MATCH if k in bench_config):
        return {}, True
    keys = {c.key for c in RUN_COLUMNS if c.source == "bench"}
    return {k: v for k, v in numbers(read_json(path)).items() if k in keys}, False


# ------------------------------------------------------------------ one task
@dataclass
class TaskReport:
    task: str
    quality: list[Column]  # headline first
    count: Column
    variants: list[Variant]  # study.variants order: the MoE cells, then the dense baseline
    runs: dict[Variant, list[Run]]
    references: dict[str, dict]  # name -> {"description", "role", test_<metric>: value, ...}
    presets: dict[Variant, str]  # the model preset of each variant (the dense baseline's: dense.model)
    soft: set[Variant] = field(default_factory=set)  # every expert computes every token
    bench: dict[Variant, dict[str, float]] = field(default_factory=dict)
    stale_bench: set[Variant] = field(default_factory=set)  # benchmark of another config: ignored
    values: pd.DataFrame = field(init=False)  # one row per (variant, seed, metric): value, flagged
    cells: dict[Variant, dict[str, dict]] = field(init=False)  # metric -> describe() over unflagged runs
    every_run: dict[Variant, dict[str, dict]] = field(init=False)  # metric -> describe() over all runs

    def __post_init__(self):
        self.values = run_frame(self)
        self.cells = aggregate(self, self.values[~self.values["flagged"]])
        self.every_run = aggregate(self, self.values)

    @property
    def headline(self) -> Column:
        return self.quality[0]

    @property
    def columns(self) -> list[Column]:
        return [*self.quality, self.count, *RUN_COLUMNS]

    def n(self, variant: Variant) -> int:
        """The runs the variant's aggregates are over (its unflagged runs with a headline value)."""
        return self.cells[variant].get(self.headline.key, {}).get("n", 0)

    def worse(self, value: float, than: float, column: Column | None = None) -> bool:
        column = column or self.headline
        return value < than if column.higher_is_better else value > than

    def role(self, role: str) -> dict[str, float]:
        """{name: headline value} of the references of one role that have the headline."""
        key = self.headline.key
        return {n: ref[key] for n, ref in self.references.items() if ref["role"] == role and key in ref}

    def below(self, variant: Variant, role: str | None = None) -> list[str]:
        """The references (of `role`) whose headline value the variant's headline mean is worse than."""
        mean = self.cells[variant].get(self.headline.key, {}).get("mean")
        key = self.headline.key
        return [
            name
            for name, ref in self.references.items()
            if mean is not None and key in ref and self.worse(mean, ref[key]) and role in (None, ref["role"])
        ]

    def ranked(self, variant: Variant) -> bool:
        """Ranked (best marks, comparisons) unless worse than a trivial reference or without an unflagged run."""
        return self.n(variant) > 0 and not self.below(variant, "trivial")

    def beats(self, stats: dict, reference: float) -> bool:
        """The 95% interval of the mean lies entirely on the better side of the reference."""
        if stats.get("ci95") is None:
            return False
        if self.headline.higher_is_better:
            return stats["mean"] - stats["ci95"] > reference
        return stats["mean"] + stats["ci95"] < reference

    def out_of_regime(self, variant: Variant) -> bool:
        """▽: the task has a bar and the variant's 95% interval is not entirely on its better side."""
        stats = self.cells[variant].get(self.headline.key)
        bars = self.role("bar")
        return bool(bars) and stats is not None and not all(self.beats(stats, v) for v in bars.values())

    def runs_below_bar(self, variant: Variant) -> list[int]:
        """The seeds (flagged or not) whose headline value is worse than the task's bar."""
        key, bars = self.headline.key, self.role("bar").values()
        return [
            r.seed for r in self.runs[variant] if key in r.values and any(self.worse(r.values[key], b) for b in bars)
        ]

    def unbeaten(self) -> list[str]:
        """The trivial references every model's headline mean (over its unflagged runs) is worse than."""
        models = [v for v in self.variants if self.n(v)]
        return [name for name in self.role("trivial") if models and all(name in self.below(v) for v in models)]

    def seed_values(self, variant: Variant, key: str) -> dict[int, float]:
        """{seed: value} of one metric over the variant's unflagged runs."""
        rows = self.values[
            (self.values["variant"] == variant.name) & (self.values["metric"] == key) & ~self.values["flagged"]
        ]
        return dict(zip(rows["seed"].astype(int), rows["value"].astype(float)))

    def flagged(self, variant: Variant) -> list[Run]:
        return [r for r in self.runs[variant] if r.flags]


def run_frame(report: TaskReport) -> pd.DataFrame:
    """The long frame (variant, seed, metric, value, flagged) of every requested run's columns."""
    keys = {c.key for c in report.columns if c.source in ("eval", "train")}
    rows = []
    for variant in report.variants:
        shown = keys - {"load_cv"} if variant in report.soft else keys  # soft: 0 by construction, not balance
        for run in report.runs[variant]:
            rows += [
                (variant.name, run.seed, k, float(v), bool(run.flags)) for k, v in run.values.items() if k in shown
            ]
    return pd.DataFrame(rows, columns=["variant", "seed", "metric", "value", "flagged"]).astype({"flagged": bool})


def aggregate(report: TaskReport, values: pd.DataFrame) -> dict[Variant, dict[str, dict]]:
    """variant -> metric -> describe() over its rows of `values`, grouped by pandas; forward_ms (one
    benchmark per variant, not per seed) as n = 1."""
    by_name = {v.name: v for v in report.variants}
    cells: dict = {v: {} for v in report.variants}
    for (name, metric), group in values.groupby(["variant", "metric"], sort=False):
        cells[by_name[name]][metric] = describe(group["value"].tolist())
    for variant, measured in report.bench.items():
        cells[variant] |= {k: describe([v]) for k, v in measured.items()}
    order = [c.key for c in report.columns]
    return {v: {k: metrics[k] for k in sorted(metrics, key=order.index)} for v, metrics in cells.items()}


def load_task(params: Params, task: str, roots: Roots) -> TaskReport:
    """The task's TaskReport: each requested run read and checked, in params.yaml order (the first problem
    stops it, as one line)."""
    runs, presets, soft, bench, stale = {}, {}, set(), {}, set()
    for variant in layout.variants(params, task):
        resolved = layout.runs(params, variant)
        read = []
        for run in resolved:
            if not roots.study_file(layout.run_paths(variant, run.seed).eval).exists():
                raise missing_error(missing_runs(roots, params))
            read.append(read_run(roots, variant, run))
        runs[variant] = [r for r, _ in read]
        config = read[0][1] if read else {}
        presets[variant] = resolved[0].preset if resolved else ""
        if is_soft(config):
            soft.add(variant)
        bench[variant], stale_bench = read_bench(roots, variant, config)
        if stale_bench:
            stale.add(variant)
    quality, count = task_columns(task)
    references = read_references(roots, task)
    return TaskReport(task, quality, count, list(runs), runs, references, presets, soft, bench, stale)


def load(params: Params, roots: Roots | None = None) -> dict[str, TaskReport]:
    """{task: TaskReport} of every task of params.yaml, in its order."""
    roots = roots or Roots()
    return {task: load_task(params, task, roots) for task in params.tasks}


# ------------------------------------------------------------------ the bases
BASE_KEYS = ("steps", "best_val_loss", "wall_s")


def read_bases(params: Params, task: str, roots: Roots) -> dict[str, dict[str, float]]:
    """{size: {steps, best_val_loss, wall_s}} of the task's pretraining runs whose metrics exist."""
    out = {}
    for size in layout.base_sizes(params, task):
        path = roots.base_file(layout.base_paths(task, size).train)
        stage = f"pretrain@{task}"  # every base of the task (the dense one too) in one stage
        if path.exists():
            trained = read_json(path, f"re-run `dvc repro study/dvc.yaml:{stage}`")
            out[size] = {k: v for k, v in numbers(trained).items() if k in BASE_KEYS}
    return out
