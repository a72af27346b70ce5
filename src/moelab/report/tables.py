"""The report stage: the study's metrics (read by data.py) -> metrics/summary.json (task -> variant ->
size -> metric -> mean/std/ci95/n, and each task's "references"), metrics/summary.md (one table per
task with its references and the dense baseline, then what the data supports, then expert
specialisation) and the figures under plots/ (plots.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..io import atomic_write_text, read_json, write_json
from . import evidence
from .data import DENSE, Column, TaskReport, load, run_config, seed_files
from .evidence import fmt

BELOW = "▼"
REFERENCES = "references"  # the key of a task's references in summary.json (no gating is named so)


def mark_column(cells: list[dict], higher_is_better: bool) -> list[str | None]:
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
    order = sorted(range(len(cells)), key=lambda i: cells[i]["mean"], reverse=higher_is_better)
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


def _overlap(a: dict, b: dict) -> bool:
    return a["mean"] - a["ci95"] <= b["mean"] + b["ci95"] and b["mean"] - b["ci95"] <= a["mean"] + a["ci95"]


_STYLE = {"best": "**{}**", "tie": "{} ≈", "lead": "_{}_", None: "{}"}

NOTE = (
    "Test split. Mean over seeds ± half-width of the exact 95% Student-t interval (seeds = runs per cell). "
    "Reference rows are the task's trivial baselines scored on the same test examples (one number, no seeds); the"
    " dense baseline has the FFN width of top_k experts. Marks compare the models (dense and MoE) that are not "
    "worse than a trivial reference: **bold**: best in its column and its interval overlaps no other model's; ≈: "
    "tied — the best mean and every model whose interval overlaps it (not claimed different; these are unpaired "
    "intervals, the paired comparisons under 'What the data supports' can separate what ≈ does not); _italic_: "
    f"best mean, but some model has n = 1 (no interval), so nothing is claimed. {BELOW}: headline mean worse than "
    "a trivial reference: not ranked, not on the Pareto front. n test: examples (tokens for LM) each quality "
    "metric is computed on. FLOPs/token are realised (measured experts/token), forward pass, matmuls only; "
    "forward ms is the latest benchmark stage's median (one run per variant, not per seed). experts/token and "
    "load CV are not ranked: load CV depends on the gate type (see the notes under each table)."
)


# ------------------------------------------------------------------ summary.json
def summary_json(reports: dict[str, TaskReport]) -> dict:
    """task -> gating -> size -> metric -> {mean, std, ci95, n}, and task -> "references" -> name -> metric."""
    out = {}
    for task, report in reports.items():
        order = [c.key for c in report.columns]
        nested: dict = defaultdict(dict)
        for gating, size in sorted(report.cells):
            metrics = report.cells[(gating, size)]
            nested[gating][size] = {k: metrics[k] for k in sorted(metrics, key=order.index)}
        nested[REFERENCES] = {
            name: {k: v for k, v in ref.items() if k.startswith("test_")} for name, ref in report.references.items()
        }
        out[task] = dict(nested)
    return out


# ------------------------------------------------------------------ summary.md
def cell_text(stats: dict, mark: str | None = None) -> str:
    text = fmt(stats["mean"]) + (f" ± {fmt(stats['ci95'])}" if stats["ci95"] is not None else "")
    return _STYLE[mark].format(text)


def count_text(report: TaskReport, cell: tuple[str, str]) -> str:
    """The test split's size: one number when every seed saw the same, else the range."""
    counts = set(report.seed_values(cell, report.count.key).values())
    if not counts:
        return "–"
    low, high = int(min(counts)), int(max(counts))
    return f"{low}" if low == high else f"{low}–{high}"


def shown_columns(report: TaskReport) -> list[Column]:
    present = {k for metrics in report.cells.values() for k in metrics}
    present |= {k for ref in report.references.values() for k in ref}
    return [c for c in report.columns if c.key in present or c == report.count]


def column_marks(report: TaskReport, column: Column) -> dict[tuple[str, str], str | None]:
    """The marks of one column over the ranked models that have it."""
    if column.higher_is_better is None:
        return {}
    cells = [c for c in report.models() if report.ranked(c) and column.key in report.cells[c]]
    return dict(zip(cells, mark_column([report.cells[c][column.key] for c in cells], column.higher_is_better)))


def model_row(report: TaskReport, cell: tuple[str, str], columns: list[Column], marks: dict) -> str:
    metrics = report.cells[cell]
    texts = []
    for column in columns:
        if column == report.count:
            texts.append(count_text(report, cell))
        elif column.key not in metrics:
            texts.append("–")
        else:
            text = cell_text(metrics[column.key], marks[column.key].get(cell))
            texts.append(text + (f" {BELOW}" if column == report.headline and not report.ranked(cell) else ""))
    seeds = metrics[report.headline.key]["n"] if report.headline.key in metrics else 0
    label = f"{DENSE} (baseline)" if cell[0] == DENSE else cell[0]
    return f"| {label} | {cell[1]} | {seeds} | " + " | ".join(texts) + " |"


def reference_row(report: TaskReport, name: str, columns: list[Column]) -> str:
    ref = report.references[name]

    def text(column: Column) -> str:
        if column.key not in ref:
            return "–"
        return f"{int(ref[column.key])}" if column == report.count else fmt(ref[column.key])

    return f"| reference: {name} | – | – | " + " | ".join(text(c) for c in columns) + " |"


def table(report: TaskReport) -> list[str]:
    columns = shown_columns(report)
    marks = {c.key: column_marks(report, c) for c in columns}
    out = [
        "| variant | size | seeds | " + " | ".join(c.label for c in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    out += [reference_row(report, name, columns) for name in report.references]
    out += [model_row(report, cell, columns, marks) for cell in report.models()]
    return out


def reference_notes(report: TaskReport) -> list[str]:
    """What each reference is; any scored on other test examples than the models; the trivial ones no
    model beats."""
    notes, count, h = [], report.count, report.headline
    model_counts = {v for c in report.models() for v in report.seed_values(c, count.key).values()}
    for name, ref in report.references.items():
        kind = "trivial reference" if ref["trivial"] else "reference (context: a model below it is still ranked)"
        notes.append(f"{name}, {kind}: {ref['description']}")
        if count.key in ref and model_counts and model_counts != {ref[count.key]}:
            notes.append(
                f"**{name} is not on the same test examples as the models**: {count.label} {int(ref[count.key])} "
                f"vs {', '.join(str(int(n)) for n in sorted(model_counts))}; re-run the reference stage."
            )
    for name in report.unbeaten():
        notes.append(
            f"**No {report.task} model beats the trivial reference {name}** on {h.label} "
            f"({fmt(report.references[name][h.key])}): every trained model is worse on the mean."
        )
    return notes


def table_notes(report: TaskReport) -> list[str]:
    h, notes = report.headline, []
    if any(metrics.get(h.key, {}).get("n") == 1 for metrics in report.cells.values()):
        notes.append(
            "n = 1 for some models: no confidence interval, so nothing is claimed best (best means in _italic_)."
        )
    notes += reference_notes(report)
    for cell in [c for c in report.models() if not report.ranked(c) and h.key in report.cells[c]]:
        below = ", ".join(report.below(cell, trivial_only=True))
        notes.append(f"{BELOW} {evidence.name(cell)}: mean {h.label} worse than {below}: not ranked.")
    if report.soft:
        notes.append(
            "load CV: – for soft routing (top_k = 0 with a dense normaliser, softmax): every expert computes "
            "every token, so its load is uniform and its CV 0 by construction, not by balancing. The column "
            "is not comparable across gate types (top-k, sparse normalisers, soft) and no best is marked."
        )
    if report.stale_bench:
        stale = ", ".join(evidence.name(c) for c in sorted(report.stale_bench))
        notes.append(f"forward ms: – for {stale}: the benchmark JSON measured another config; re-run the benchmark.")
    return [f"- {n}" for n in notes]


def markdown(reports: dict[str, TaskReport], specialisation: dict | None = None) -> str:
    out = ["# moelab study summary", "", NOTE, ""]
    for task, report in reports.items():
        out += [f"## {task}", "", *table(report), "", *table_notes(report), ""]
        if specialisation and specialisation.get(task):
            out += specialisation_markdown(specialisation[task])
    out += ["## What the data supports", "", evidence.RULE, ""]
    for report in reports.values():
        out += evidence.markdown(report)
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


def report(
    study_dir: str | Path = "metrics/study",
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = "plots",
    bench_dir: str | Path | None = None,
) -> dict:
    """Aggregate study_dir (see data.py) and bench_dir/<task>/<variant>.json (default: metrics/bench)
    into out_dir/summary.{json,md} (default: the parent of study_dir, i.e. metrics/) and the figures
    into plots_dir (None: no figures). Returns the summary.json object."""
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir.parent
    reports = load(study_dir, bench_dir)
    summary = summary_json(reports)
    write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", markdown(reports, collect_specialisation(study_dir)))
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(study_dir, Path(plots_dir), reports)
    return summary
