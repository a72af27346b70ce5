"""The report stage: every metrics file -> metrics/summary.json (task -> variant -> size -> metric
-> mean/std/ci95/n) and metrics/summary.md (one table per task)."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from .io import atomic_write_text, read_json, write_json

# column: (source file, key, lower is better, label)
COLUMNS = [
    ("eval", "test_ppl", True, "test ppl"),
    ("eval", "rouge1", False, "ROUGE-1"),
    ("eval", "rouge2", False, "ROUGE-2"),
    ("eval", "rougeL", False, "ROUGE-L"),
    ("eval", "rougeLsum", False, "ROUGE-Lsum"),
    ("eval", "accuracy", False, "accuracy"),
    ("eval", "macro_f1", False, "macro-F1"),
    ("eval", "experts_per_token", None, "experts/token"),
    ("eval", "flops_per_token", True, "FLOPs/token"),
    ("benchmark", "forward_ms", True, "forward ms"),
    ("eval", "load_cv", True, "load CV"),
    ("eval", "dropped_fraction", True, "dropped"),
    ("train", "wall_s", True, "train s"),
]

# two-sided 95% Student-t quantiles for n-1 degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    return _T95.get(df) or next((v for k, v in sorted(_T95.items(), reverse=True) if k <= df), 1.96) if df <= 30 else 1.96


def describe(values: list[float]) -> dict:
    """mean, sample std, half-width of the 95% t confidence interval (None for n = 1), n."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = t95(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "ci95": ci, "n": n}


def collect(metrics_dir: Path) -> dict:
    """{task: {gating: {size: {metric: [values over seeds]}}}} from metrics/<task>/<variant>/..."""
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for eval_path in sorted(metrics_dir.glob("*/*/s*/eval.json")):
        seed_dir, variant_dir = eval_path.parent, eval_path.parent.parent
        ev = read_json(eval_path)
        config = ev.get("_meta", {}).get("config", {})
        task, gating, size = config.get("task"), config.get("gating"), config.get("model")
        if not (task and gating and size):
            continue
        sources = {"eval": ev, "train": _maybe(seed_dir / "train.json"), "benchmark": _maybe(variant_dir / "benchmark.json")}
        for source, key, _, _ in COLUMNS:
            value = sources[source].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cells[task][gating][size][key].append(float(value))
    return cells


def _maybe(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def summarise(cells: dict) -> dict:
    return {task: {gating: {size: {key: describe(vals) for key, vals in metrics.items()}
                            for size, metrics in sorted(sizes.items())}
                   for gating, sizes in sorted(gatings.items())}
            for task, gatings in sorted(cells.items())}


def _interval(d: dict) -> tuple[float, float]:
    half = d["ci95"] or 0.0
    return d["mean"] - half, d["mean"] + half


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e4 or (abs(v) < 1e-2 and v != 0) else f"{v:.3f}".rstrip("0").rstrip(".")


def markdown(summary: dict) -> str:
    out = ["# moelab study summary", "",
           "Mean over seeds ± half-width of the 95% t-interval (n = seeds). **Bold**: best in its column; "
           "≈ marks cells whose interval overlaps the best one's (not claimed different). "
           "FLOPs/token are realised (measured experts/token), forward pass, matmuls only.", ""]
    for task, gatings in summary.items():
        rows = [(g, s, m) for g, sizes in gatings.items() for s, m in sizes.items()]
        cols = [c for c in COLUMNS if any(c[1] in m for _, _, m in rows)]
        out += [f"## {task}", "", "| variant | size | n | " + " | ".join(c[3] for c in cols) + " |",
                "|---|---|---|" + "---|" * len(cols)]
        best = {}
        for _, key, lower, _ in cols:
            have = [m[key] for _, _, m in rows if key in m]
            if lower is not None and have:
                best[key] = (min if lower else max)(have, key=lambda d: d["mean"])
        for gating, size, m in rows:
            n = max((d["n"] for d in m.values()), default=0)
            cells = []
            for _, key, _, _ in cols:
                if key not in m:
                    cells.append("–")
                    continue
                d, text = m[key], _fmt(m[key]["mean"])
                if d["ci95"] is not None:
                    text += f" ± {_fmt(d['ci95'])}"
                if key in best and d is best[key]:
                    text = f"**{text}**"
                elif key in best and _overlap(d, best[key]) and d["ci95"] is not None:
                    text += " ≈"
                cells.append(text)
            out.append(f"| {gating} | {size} | {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _overlap(a: dict, b: dict) -> bool:
    (lo_a, hi_a), (lo_b, hi_b) = _interval(a), _interval(b)
    return lo_a <= hi_b and lo_b <= hi_a


def report(metrics_dir: str | Path = "metrics", plots_dir: str | Path = "plots") -> dict:
    metrics_dir = Path(metrics_dir)
    summary = summarise(collect(metrics_dir))
    write_json(metrics_dir / "summary.json", summary)
    atomic_write_text(metrics_dir / "summary.md", markdown(summary))
    return summary
