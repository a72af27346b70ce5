"""The report stage: every metrics file -> metrics/summary.json (task -> variant -> size -> metric
-> mean/std/ci95/n), metrics/summary.md (one table per task, plus expert specialisation) and the
figures under plots/ (see moelab.plots)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from ..io import atomic_write_text, meta_path, read_json, write_json

# column: (source file, key, lower is better, label)
COLUMNS = [
    ("eval", "test_ppl", True, "test ppl"),
    ("eval", "test_rouge1", False, "ROUGE-1"),
    ("eval", "test_rouge2", False, "ROUGE-2"),
    ("eval", "test_rougeL", False, "ROUGE-L"),
    ("eval", "test_rougeLsum", False, "ROUGE-Lsum"),
    ("eval", "test_accuracy", False, "accuracy"),
    ("eval", "test_loss", True, "test loss"),
    ("eval", "test_macro_f1", False, "macro-F1"),
    ("eval", "experts_per_token", None, "experts/token"),
    ("eval", "flops_per_token", True, "FLOPs/token"),
    ("benchmark", "forward_ms", True, "forward ms"),
    ("eval", "load_cv", True, "load CV"),
    ("eval", "dropped_fraction", True, "dropped"),
    ("train", "wall_s", True, "train s"),
]

# two-sided 95% Student-t quantiles for n-1 degrees of freedom
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t95(df: int) -> float:
    return (
        _T95.get(df) or next((v for k, v in sorted(_T95.items(), reverse=True) if k <= df), 1.96) if df <= 30 else 1.96
    )


def describe(values: list[float]) -> dict:
    """mean, sample std, half-width of the 95% t confidence interval (None for n = 1), n."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = t95(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "ci95": ci, "n": n}


def seed_files(study_dir: Path, stage: str) -> list[Path]:
    """metrics/study/<task>/<variant>/<stage>/s<seed>.json, sorted."""
    return sorted(study_dir.glob(f"*/*/{stage}/s*.json"), key=lambda p: (p.parent.parent, _seed(p)))


def run_config(metrics_file: Path) -> dict:
    """The resolved config a metrics file was produced with (its .meta.json)."""
    meta = meta_path(metrics_file)
    return read_json(meta).get("config", {}) if meta.exists() else {}


def collect(metrics_dir: Path, bench_dir: Path | None = None) -> dict:
    """{task: {gating: {size: {metric: [values over seeds]}}}} from metrics/study/<task>/<variant>/...
    and the benchmark's bench_dir/<task>/<variant>.json (default: metrics/bench beside the study)."""
    bench_dir = bench_dir if bench_dir is not None else metrics_dir.parent / "bench"
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    benchmarked: set[Path] = set()
    for eval_path in seed_files(metrics_dir, "eval"):
        variant_dir = eval_path.parent.parent
        config = run_config(eval_path)
        task, gating, size = config.get("task"), config.get("gating"), config.get("preset")
        if not (task and gating and size):
            continue
        ev = read_json(eval_path)
        # the benchmark is per variant, not per seed: counted once (n = 1), not repeated as if it varied
        first_seed = variant_dir not in benchmarked
        benchmarked.add(variant_dir)
        sources = {
            "eval": ev,
            "train": _maybe(variant_dir / "train" / eval_path.name),
            "benchmark": _maybe(bench_dir / task / f"{variant_dir.name}.json") if first_seed else {},
        }
        for source, key, _, _ in COLUMNS:
            value = sources[source].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cells[task][gating][size][key].append(float(value))
    return cells


def _maybe(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def summarise(cells: dict) -> dict:
    return {
        task: {
            gating: {
                size: {key: describe(vals) for key, vals in metrics.items()} for size, metrics in sorted(sizes.items())
            }
            for gating, sizes in sorted(gatings.items())
        }
        for task, gatings in sorted(cells.items())
    }


def _interval(d: dict) -> tuple[float, float]:
    half = d["ci95"] or 0.0
    return d["mean"] - half, d["mean"] + half


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e4 or (abs(v) < 1e-2 and v != 0) else f"{v:.3f}".rstrip("0").rstrip(".")


def _overlap(a: dict, b: dict) -> bool:
    """Whether two cells cannot be told apart: their 95% intervals overlap, or either has none (n = 1)."""
    if a["ci95"] is None or b["ci95"] is None:
        return True
    (lo_a, hi_a), (lo_b, hi_b) = _interval(a), _interval(b)
    return lo_a <= hi_b and lo_b <= hi_a


def mark_column(cells: list[dict], lower_is_better: bool) -> list[str | None]:
    """The mark of each cell of one column (a describe() dict each):

    "best"  the best mean, and its 95% interval overlaps no other cell's: a claim (bold);
    "tie"   the best mean or a cell whose interval overlaps the best one's, when the best is not
            separable from the rest (≈): not claimed different;
    "lead"  the best mean when some cell of the column has n = 1, so there is no interval to claim
            anything with (italic);
    None    otherwise, and for every cell when all means are equal.
    """
    marks: list[str | None] = [None] * len(cells)
    if len(cells) < 2 or len({c["mean"] for c in cells}) == 1:
        return marks
    order = sorted(range(len(cells)), key=lambda i: cells[i]["mean"], reverse=not lower_is_better)
    top = cells[order[0]]
    if any(c["ci95"] is None for c in cells):
        for i in order:
            if cells[i]["mean"] == top["mean"]:
                marks[i] = "lead"
        return marks
    rivals = [i for i in order[1:] if _overlap(cells[i], top)]
    if not rivals:
        marks[order[0]] = "best"
        return marks
    for i in [order[0], *rivals]:
        marks[i] = "tie"
    return marks


_STYLE = {"best": "**{}**", "tie": "{} ≈", "lead": "_{}_", None: "{}"}

NOTE = (
    "Mean over seeds ± half-width of the 95% Student-t interval (n = seeds per cell). "
    "**Bold**: best in its column and its interval overlaps no other cell's; "
    "≈: tied — the best mean and every cell whose interval overlaps it (not claimed different); "
    "_italic_: best mean, but the column has cells with n = 1 (no interval), so nothing is claimed. "
    "FLOPs/token are realised (measured experts/token), forward pass, matmuls only; forward ms is "
    "the benchmark stage's latency (one run per variant, not per seed)."
)


def markdown(summary: dict, specialisation: dict | None = None) -> str:
    out = ["# moelab study summary", "", NOTE, ""]
    for task, gatings in summary.items():
        rows = [(g, s, m) for g, sizes in gatings.items() for s, m in sizes.items()]
        cols = [c for c in COLUMNS if any(c[1] in m for _, _, m in rows)]
        ns = sorted({max((d["n"] for d in m.values()), default=0) for _, _, m in rows})
        out += [f"## {task}", ""]
        if ns and ns[0] < 2:
            out += [
                "> n = 1 for some cells: no confidence interval, so no variant is claimed best "
                "(best means are in _italic_). Add seeds to params.yaml `seeds` for intervals.",
                "",
            ]
        out += ["| variant | size | n | " + " | ".join(c[3] for c in cols) + " |", "|---|---|---|" + "---|" * len(cols)]
        texts = [[] for _ in rows]
        for _, key, lower, _ in cols:
            present = [i for i, (_, _, m) in enumerate(rows) if key in m]
            marks = dict(
                zip(
                    present,
                    mark_column([rows[i][2][key] for i in present], lower)
                    if lower is not None
                    else [None] * len(present),
                )
            )
            for i, (_, _, m) in enumerate(rows):
                if key not in m:
                    texts[i].append("–")
                    continue
                d = m[key]
                text = _fmt(d["mean"]) + (f" ± {_fmt(d['ci95'])}" if d["ci95"] is not None else "")
                texts[i].append(_STYLE[marks[i]].format(text))
        for (gating, size, m), cells in zip(rows, texts):
            n = max((d["n"] for d in m.values()), default=0)
            out.append(f"| {gating} | {size} | {n} | " + " | ".join(cells) + " |")
        out.append("")
        if specialisation and specialisation.get(task):
            out += specialisation_markdown(specialisation[task])
    return "\n".join(out)


def specialisation_markdown(spec: dict, per_expert: int = 5) -> list[str]:
    """spec: {(gating, size): eval.json `specialisation`} -> a short section."""
    out = [
        "### Expert specialisation (last MoE layer, test split)",
        "",
        "Top input tokens each expert computed, with the share of that token's occurrences routed to "
        "the expert (100% for every expert under soft softmax routing). One seed per variant.",
        "",
    ]
    for (gating, size), sp in sorted(spec.items()):
        out += [
            f"**{gating} {size}** (MoE layer {sp.get('layer')})",
            "",
            "| expert | tokens | top tokens (share) |",
            "|---|---|---|",
        ]
        for e in sp.get("experts", []):
            tops = ", ".join(f"`{_token(t['token'])}` {t['share']:.0%}" for t in e.get("top", [])[:per_expert])
            out.append(f"| {e['expert']} | {e.get('tokens', '')} | {tops} |")
        out.append("")
    return out


def _token(text: str) -> str:
    """A token readable inside a markdown table cell: escapes shown, spaces as ␣."""
    return repr(text)[1:-1].replace("`", "'").replace("|", "\\|").replace(" ", "␣")


def collect_specialisation(
    metrics_dir: Path, variants: tuple[str, ...] = ("linear-sparsemax", "linear-softmax-top2")
) -> dict:
    """{task: {(gating, size): specialisation}} from the lowest seed of each listed gating that has one."""
    out: dict = defaultdict(dict)
    for eval_path in seed_files(metrics_dir, "eval"):
        routing = eval_path.with_name(f"{eval_path.stem}.routing.json")
        config = run_config(eval_path)
        key = (config.get("gating"), config.get("preset"))
        if key[0] in variants and key not in out[config.get("task")] and routing.exists():
            spec = read_json(routing).get("specialisation")
            if spec:
                out[config.get("task")][key] = spec
    return {k: v for k, v in out.items() if v}


def _seed(path: Path) -> int:
    try:
        return int(path.stem.lstrip("s"))
    except ValueError:
        return 1 << 30


def report(
    study_dir: str | Path = "metrics/study",
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = "plots",
    bench_dir: str | Path | None = None,
) -> dict:
    """Aggregate study_dir/<task>/<variant>/s<seed>/*.json and bench_dir/<task>/<variant>.json (default:
    metrics/bench) into out_dir/summary.{json,md} (default: the parent of study_dir, i.e. metrics/)
    and the figures into plots_dir (None: no figures)."""
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir.parent
    summary = summarise(collect(study_dir, Path(bench_dir) if bench_dir is not None else None))
    write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", markdown(summary, collect_specialisation(study_dir)))
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(study_dir, Path(plots_dir), summary)
    return summary
