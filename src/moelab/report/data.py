"""What the report reads, as one TaskReport per task: the per-seed values of every model (a pandas
frame), their aggregates (mean, std, 95% Student-t interval, n), the task's trivial references and
the facts the tables and figures need about each cell (soft routing, below a reference, stale
benchmark).

Inputs, relative to the study directory (metrics/study) and the benchmark directory (metrics/bench):
  <task>/<variant>/eval/s<seed>.json (+ .meta.json: the run config; .routing.json: per-layer detail)
  <task>/<variant>/train/s<seed>.json        wall_s
  <task>/reference.json                      the task's references (`moelab reference`)
  <bench>/<task>/<variant>.json (+ .meta.json)  forward_ms: the latest benchmark, the only source of it

Which quality metrics a task has, which is its headline and what its test split is counted in are
read from the task's class (moelab.tasks.TASKS: `metrics`, `count_key`), never from a list here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..io import meta_path, read_json
from ..stats import mean_interval

DENSE = "dense"
CELL_KEYS = ["task", "gating", "size"]
SEED_FILE = re.compile(r"s(\d+)\.json")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool | None  # None: a description, not ranked
    source: str = "eval"  # eval (eval/s<seed>.json) | train (train/s<seed>.json) | bench (per variant)


# routing and cost, the same for every task (the quality columns come from the task's `metrics`);
# load CV is not ranked: its meaning depends on the gate type (see TaskReport.soft)
RUN_COLUMNS = (
    Column("experts_per_token", "experts/token", None),
    Column("flops_per_token", "FLOPs/token", False),
    Column("forward_ms", "forward ms", False, "bench"),
    Column("load_cv", "load CV", None),
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


@dataclass
class TaskReport:
    task: str
    quality: list[Column]  # headline first
    count: Column
    values: pd.DataFrame  # one row per (gating, size, seed, metric): value; seed is -1 for the benchmark
    cells: dict[tuple[str, str], dict[str, dict]]  # (gating, size) -> metric -> describe()
    references: dict[str, dict]  # name -> {"description", "trivial", test_<metric>: value, ...}
    soft: set[tuple[str, str]] = field(default_factory=set)  # every expert computes every token
    stale_bench: set[tuple[str, str]] = field(default_factory=set)  # benchmark of another config: ignored

    @property
    def headline(self) -> Column:
        return self.quality[0]

    @property
    def columns(self) -> list[Column]:
        return [*self.quality, self.count, *RUN_COLUMNS]

    def models(self) -> list[tuple[str, str]]:
        """The dense baseline first, then the MoE cells by gating and size."""
        return sorted(self.cells, key=lambda cell: (cell[0] != DENSE, cell[0], size_order(cell[1])))

    def worse(self, value: float, than: float, column: Column | None = None) -> bool:
        column = column or self.headline
        return value < than if column.higher_is_better else value > than

    def below(self, cell: tuple[str, str], trivial_only: bool = False) -> list[str]:
        """The references whose headline value the cell's headline mean is worse than."""
        key = self.headline.key
        mean = self.cells[cell].get(key, {}).get("mean")
        return [
            name
            for name, ref in self.references.items()
            if mean is not None and key in ref and self.worse(mean, ref[key]) and (ref["trivial"] or not trivial_only)
        ]

    def ranked(self, cell: tuple[str, str]) -> bool:
        """A cell is ranked (best marks, Pareto front, comparisons) unless it is worse than a trivial reference."""
        return self.headline.key in self.cells[cell] and not self.below(cell, trivial_only=True)

    def unbeaten(self) -> list[str]:
        """The trivial references every model's headline mean is worse than (none when no model)."""
        key = self.headline.key
        models = [c for c in self.models() if key in self.cells[c]]
        return [
            name
            for name, ref in self.references.items()
            if ref["trivial"] and key in ref and models and all(name in self.below(c) for c in models)
        ]

    def seed_values(self, cell: tuple[str, str], key: str) -> dict[int, float]:
        """{seed: value} of one metric of one cell."""
        rows = self.values[
            (self.values["gating"] == cell[0]) & (self.values["size"] == cell[1]) & (self.values["metric"] == key)
        ]
        return dict(zip(rows["seed"].astype(int), rows["value"].astype(float)))


def size_order(size: str) -> tuple[int, str]:
    return len(size), size  # e8 before e16


# ------------------------------------------------------------------ reading the tree
def seed_files(study_dir: Path, stage: str) -> list[Path]:
    """metrics/study/<task>/<variant>/<stage>/s<seed>.json (not their .meta / .routing files), by seed."""
    found = [p for p in Path(study_dir).glob(f"*/*/{stage}/s*.json") if SEED_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: (p.parent.parent, seed_of(p)))


def seed_of(path: Path) -> int:
    return int(SEED_FILE.fullmatch(path.name).group(1))


def run_config(metrics_file: Path) -> dict:
    """The resolved config a metrics file was produced with (its .meta.json)."""
    meta = meta_path(metrics_file)
    return read_json(meta).get("config", {}) if meta.exists() else {}


def normaliser_sparse(config: dict) -> bool | None:
    """Whether the run's normaliser puts exactly zero weight on some experts (the registry's `sparse`;
    None: a dense run or an unknown normaliser)."""
    from ..moe.normalisers import NORMALISERS

    norm = NORMALISERS.classes.get(((config.get("model") or {}).get("moe") or {}).get("norm"))
    return None if norm is None else norm.sparse


def is_soft(config: dict) -> bool:
    """Soft routing with a dense normaliser: top_k = 0 and a normaliser that gives every expert a
    positive weight (softmax), so every expert computes every token and the load is uniform by
    construction. Decided from the run config, never from the measured load."""
    top_k = ((config.get("model") or {}).get("moe") or {}).get("top_k")
    return top_k == 0 and normaliser_sparse(config) is False


def _numbers(record: dict, keys: set[str]) -> dict[str, float]:
    return {
        k: float(v) for k, v in record.items() if k in keys and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _maybe(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


BENCH_MUST_MATCH = ("task", "gating", "preset", "model", "data")  # what a latency depends on


def bench_matches(bench_json: Path, config: dict) -> bool:
    """Whether the benchmark measured the evaluated config (no provenance beside it: nothing to contradict)."""
    bench_config = run_config(bench_json)
    return all(bench_config.get(k) == config.get(k) for k in BENCH_MUST_MATCH if k in bench_config)


def read_runs(study_dir: Path, bench_dir: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The long frame (task, gating, size, seed, metric, value) of every evaluated seed, plus, per
    task, the cells' facts: {"soft": {...}, "stale_bench": {...}}."""
    rows, facts = [], {}
    benchmarked: set[tuple] = set()
    for eval_path in seed_files(study_dir, "eval"):
        config = run_config(eval_path)
        task, gating, size = config.get("task"), config.get("gating"), config.get("preset")
        if not (task and gating and size):
            continue
        quality, count = task_columns(task)
        keys = {c.key for c in [*quality, count, *RUN_COLUMNS] if c.source == "eval"}
        task_facts = facts.setdefault(task, {"soft": set(), "stale_bench": set()})
        if is_soft(config):
            task_facts["soft"].add((gating, size))
            keys.discard("load_cv")  # 0 by construction: not a measurement of balance
        seed = seed_of(eval_path)
        values = {
            **_numbers(read_json(eval_path), keys),
            **_numbers(_maybe(eval_path.parent.parent / "train" / eval_path.name), {"wall_s"}),
        }
        rows += [(task, gating, size, seed, k, v) for k, v in values.items()]
        variant = eval_path.parent.parent.name
        if (task, variant) not in benchmarked:  # one benchmark per variant (n = 1), not one per seed
            benchmarked.add((task, variant))
            rows += [
                (task, gating, size, -1, k, v) for k, v in read_bench(bench_dir, task, variant, config, task_facts)
            ]
    frame = pd.DataFrame(rows, columns=[*CELL_KEYS, "seed", "metric", "value"])
    return frame, facts


def read_bench(bench_dir: Path, task: str, variant: str, config: dict, task_facts: dict) -> list[tuple[str, float]]:
    """(key, value) of the benchmark columns from <bench_dir>/<task>/<variant>.json, the one source of them."""
    path = bench_dir / task / f"{variant}.json"
    if not path.exists():
        return []
    if not bench_matches(path, config):
        task_facts["stale_bench"].add((config["gating"], config["preset"]))
        return []
    keys = {c.key for c in RUN_COLUMNS if c.source == "bench"}
    return list(_numbers(read_json(path), keys).items())


def read_references(study_dir: Path, task: str, headline: Column) -> dict[str, dict]:
    """<task>/reference.json: name -> {"description", "trivial", test_<metric>...}. A reference is
    trivial (variants worse than it are not ranked) when its entry says "trivial": true; where no entry
    of the task says either way, the reference with the weakest headline value is the trivial floor
    (majority below bag-of-words logistic regression) and the others are context."""
    path = Path(study_dir) / task / "reference.json"
    out = {}
    for name, entry in (read_json(path) if path.exists() else {}).items():
        if isinstance(entry, dict):
            tests = {k: entry[k] for k in _numbers(entry, set(entry)) if k.startswith("test_")}  # ints stay ints
            declared = entry.get("trivial") if isinstance(entry.get("trivial"), bool) else None
            out[name] = {"description": str(entry.get("description", "")), "trivial": declared, **tests}
    if all(ref["trivial"] is None for ref in out.values()):
        scored = [ref[headline.key] for ref in out.values() if headline.key in ref]
        floor = (min if headline.higher_is_better else max)(scored) if scored else None
        for ref in out.values():
            ref["trivial"] = ref.get(headline.key) == floor and floor is not None
    return {name: {**ref, "trivial": bool(ref["trivial"])} for name, ref in out.items()}


def aggregate(values: pd.DataFrame) -> dict[tuple[str, str], dict[str, dict]]:
    """(gating, size) -> metric -> describe() over seeds, grouped by pandas."""
    cells: dict = {}
    for (gating, size, metric), group in values.groupby(["gating", "size", "metric"], sort=True):
        cells.setdefault((gating, size), {})[metric] = describe(group["value"].tolist())
    return cells


def load(study_dir: str | Path, bench_dir: str | Path | None = None) -> dict[str, TaskReport]:
    """{task: TaskReport} of every task with at least one evaluated run (default bench: metrics/bench)."""
    study_dir = Path(study_dir)
    bench_dir = Path(bench_dir) if bench_dir is not None else study_dir.parent / "bench"
    frame, facts = read_runs(study_dir, bench_dir)
    reports = {}
    for task, values in frame.groupby("task", sort=True):
        quality, count = task_columns(task)
        reports[task] = TaskReport(
            task,
            quality,
            count,
            values.reset_index(drop=True),
            aggregate(values),
            read_references(study_dir, task, quality[0]),
            facts[task]["soft"],
            facts[task]["stale_bench"],
        )
    return reports
