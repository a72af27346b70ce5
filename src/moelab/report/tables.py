"""The report stage: the runs params.yaml asks for (read by data.py) ->

metrics/study.json     the study's headline, the one DVC metrics file of the report (`dvc metrics diff`):
                       numbers only, 6 significant digits; task -> variant -> headline mean and its ci95,
                       bpc (LM), experts and FLOPs per token, load CV, routing entropy / ln E, flagged
                       runs, n; task -> "references" -> name -> headline (and bpc)
metrics/summary.json   the details: per variant every metric's mean/std/ci95/n, its flags, its regime;
                       the references and their roles; the comparisons with raw and Holm-adjusted p;
                       the bases
metrics/summary.md     one table per task with its references, flags and marks, the bases, then what
                       the data supports, then expert specialisation
plots/                 the figures (plots.py)
"""

from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..io import atomic_write_text, write_json
from ..study import Variant
from . import evidence
from .data import Column, Roots, TaskReport, load, read_bases
from .evidence import fmt

BELOW = "▼"  # worse than a trivial reference: not ranked
OUT = "▽"  # out of regime: the 95% interval is not entirely on the better side of the task's bar
REFERENCES = "references"  # the key of a task's references in study.json / summary.json (no variant is named so)
SIGNIFICANT = 6  # digits of every number of study.json: `dvc metrics diff` stays quiet on float noise
HEADLINE_EXTRAS = ("test_bpc",)  # beside the headline in study.json where a task has it (bits per character)
HEADLINE_RUN_KEYS = ("experts_per_token", "flops_per_token", "load_cv", "routing_entropy_ratio")


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
    "Test split. Mean over seeds ± half-width of the exact 95% Student-t interval, over the variant's unflagged "
    "runs (seeds: '2 of 3' when a run is flagged; flags: per run, see the notes under each table). Reference rows "
    "are the task's references scored on the same test examples (one number, no seeds), each with a role: "
    f"trivial (a model worse on the mean is {BELOW}: not ranked), bar (the classical result a model must beat to be"
    f" in regime: {OUT} marks a model whose 95% interval is not entirely on its better side, and each run below "
    "it), context (shown, nothing decided). The dense baseline has the FFN width of top_k experts. Marks compare "
    "the ranked models: **bold**: best in its column and its interval overlaps no other model's; ≈: tied — the "
    "best mean and every model whose interval overlaps it (unpaired intervals: the Holm-adjusted paired tests "
    "under 'What the data supports' decide what the text may claim); _italic_: best mean, but some model has "
    "n = 1 (no interval), so nothing is claimed. n test: examples (tokens for LM) each quality metric is computed "
    "on. FLOPs/token are realised (measured experts/token), forward pass, matmuls only; forward ms is the latest "
    "benchmark stage's median (one run per variant, not per seed). experts/token, load CV and entropy / ln E "
    "(routing entropy over ln E, mean over MoE layers: 1 = spread evenly, 0 = one expert) are not ranked."
)

FLAG_NOTE = (
    "Flags (a flagged run is left out of the row's numbers, marks and comparisons): one class — classification, "
    "at least 99% of test predictions are one class; dead experts (layer) — in that MoE layer more than half the "
    "experts computed fewer than 1/(10 E) of the tokens; degenerate outputs — summarisation, more than half the "
    f"generated test summaries degenerate. {OUT} beside a seed: that run's headline is worse than the bar."
)


# ------------------------------------------------------------------ study.json (the headline)
def significant(value: float | int, digits: int = SIGNIFICANT) -> float | int:
    """The value to `digits` significant digits (an int stays an int)."""
    return value if isinstance(value, int) else float(f"{value:.{digits}g}")


def headline_variant(report: TaskReport, variant: Variant) -> dict:
    """The headline numbers of one variant (over its unflagged runs; nothing but counts when there is none)."""
    cells, key = report.cells[variant], report.headline.key
    out: dict = {}
    if key in cells:
        out[key] = cells[key]["mean"]
        if cells[key]["ci95"] is not None:
            out[f"{key}_ci95"] = cells[key]["ci95"]
    for k in (*HEADLINE_EXTRAS, *HEADLINE_RUN_KEYS):
        if k in cells:  # load_cv is not there for soft routing, the routing keys not for the dense baseline
            out[k] = cells[k]["mean"]
    out |= {"flagged_runs": len(report.flagged(variant)), "n": report.n(variant)}
    return {k: significant(v) for k, v in out.items()}


def headline_json(reports: dict[str, TaskReport]) -> dict:
    """task -> variant -> headline numbers; task -> "references" -> name -> headline (and bpc)."""
    out = {}
    for task, report in reports.items():
        keys = (report.headline.key, *HEADLINE_EXTRAS)
        references = {
            name: {k: significant(ref[k]) for k in keys if k in ref} for name, ref in report.references.items()
        }
        out[task] = {v.name: headline_variant(report, v) for v in report.variants}
        out[task][REFERENCES] = {name: values for name, values in references.items() if values}
    return out


# ------------------------------------------------------------------ summary.json (the details)
def comparison_json(comp: evidence.Comparison) -> dict:
    iv = comp.difference
    return {
        "a": comp.a.name,
        "b": comp.b.name,
        "mean": iv.mean,
        "ci95": [iv.low, iv.high] if iv.half_width is not None else None,
        "n": iv.n,
        "p": comp.p,
        "p_holm": comp.p_holm,
        "separated": comp.separated,
    }


def variant_json(report: TaskReport, variant: Variant) -> dict:
    runs = report.runs[variant]
    out = {
        "preset": report.presets[variant],
        "seeds": [r.seed for r in runs],
        "n": report.n(variant),
        "flags": {f"s{r.seed}": list(r.flags) for r in runs if r.flags},
        "runs_below_bar": report.runs_below_bar(variant),
        "out_of_regime": report.out_of_regime(variant),
        "below_trivial": report.below(variant, "trivial"),
        "metrics": report.cells[variant],
    }
    if report.flagged(variant):
        out["every_run"] = report.every_run[variant]
    return out


def summary_json(reports: dict[str, TaskReport], bases: dict[str, dict]) -> dict:
    out = {}
    for task, report in reports.items():
        vs_dense, vs_best = evidence.comparisons(report)
        out[task] = {
            "headline": report.headline.key,
            "variants": {v.name: variant_json(report, v) for v in report.variants},
            REFERENCES: report.references,
            "comparisons": {
                "vs_dense": [comparison_json(c) for c in vs_dense],
                "best_vs_others": [comparison_json(c) for c in vs_best],
            },
            "bases": bases.get(task, {}),
        }
    return out


# ------------------------------------------------------------------ summary.md
def cell_text(stats: dict, mark: str | None = None) -> str:
    text = fmt(stats["mean"]) + (f" ± {fmt(stats['ci95'])}" if stats["ci95"] is not None else "")
    return _STYLE[mark].format(text)


def count_text(report: TaskReport, variant: Variant) -> str:
    """The test split's size: one number when every run saw the same, else the range."""
    counts = {r.values[report.count.key] for r in report.runs[variant] if report.count.key in r.values}
    if not counts:
        return "–"
    low, high = int(min(counts)), int(max(counts))
    return f"{low}" if low == high else f"{low}–{high}"


def seeds_text(report: TaskReport, variant: Variant) -> str:
    n, runs = report.n(variant), len(report.runs[variant])
    return f"{n}" if n == runs else f"{n} of {runs}"


def flags_text(report: TaskReport, variant: Variant) -> str:
    """'s1: one class; s2: ▽': per run, its flags and whether it is below the bar."""
    below = set(report.runs_below_bar(variant))
    notes = [(r.seed, [*r.flags, *([OUT] if r.seed in below else [])]) for r in report.runs[variant]]
    return "; ".join(f"s{seed}: {', '.join(n)}" for seed, n in notes if n) or "–"


def shown_columns(report: TaskReport) -> list[Column]:
    present = {k for metrics in report.every_run.values() for k in metrics}
    present |= {k for ref in report.references.values() for k in ref}
    return [c for c in report.columns if c.key in present or c == report.count]


def column_marks(report: TaskReport, column: Column) -> dict[Variant, str | None]:
    """The marks of one column over the ranked models that have it."""
    if column.higher_is_better is None:
        return {}
    models = [v for v in report.variants if report.ranked(v) and column.key in report.cells[v]]
    return dict(zip(models, mark_column([report.cells[v][column.key] for v in models], column.higher_is_better)))


def headline_marks(report: TaskReport, variant: Variant) -> str:
    marks = [BELOW] if report.below(variant, "trivial") else []
    return "".join(f" {m}" for m in marks + ([OUT] if report.out_of_regime(variant) else []))


def model_row(report: TaskReport, variant: Variant, columns: list[Column], marks: dict) -> str:
    # every run flagged: the numbers over all of them, in parentheses, neither ranked nor marked
    every_flagged = report.n(variant) == 0
    metrics = report.every_run[variant] if every_flagged else report.cells[variant]
    texts = []
    for column in columns:
        if column == report.count:
            texts.append(count_text(report, variant))
        elif column.key not in metrics:
            texts.append("–")
        elif every_flagged:
            texts.append(f"({cell_text(metrics[column.key])})")
        else:
            text = cell_text(metrics[column.key], marks[column.key].get(variant))
            texts.append(text + (headline_marks(report, variant) if column == report.headline else ""))
    label = f"{variant.name} (baseline)" if variant.dense else variant.name
    cells = [label, seeds_text(report, variant), flags_text(report, variant), *texts]
    return "| " + " | ".join(cells) + " |"


def reference_row(report: TaskReport, name: str, columns: list[Column]) -> str:
    ref = report.references[name]

    def text(column: Column) -> str:
        if column.key not in ref:
            return "–"
        return f"{int(ref[column.key])}" if column == report.count else fmt(ref[column.key])

    return f"| reference: {name} ({ref['role']}) | – | – | " + " | ".join(text(c) for c in columns) + " |"


def table(report: TaskReport) -> list[str]:
    columns = shown_columns(report)
    marks = {c.key: column_marks(report, c) for c in columns}
    out = [
        "| variant | seeds | flags | " + " | ".join(c.label for c in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    out += [reference_row(report, name, columns) for name in report.references]
    out += [model_row(report, v, columns, marks) for v in report.variants]
    return out


def reference_notes(report: TaskReport) -> list[str]:
    """What each reference is and its role; any scored on other test examples than the models; the trivial
    ones no model beats."""
    notes, count, h = [], report.count, report.headline
    model_counts = {r.values[count.key] for runs in report.runs.values() for r in runs if count.key in r.values}
    for name, ref in report.references.items():
        notes.append(f"{name} ({ref['role']}): {ref['description']}")
        if count.key in ref and model_counts and model_counts != {ref[count.key]}:
            notes.append(
                f"**{name} is not on the same test examples as the models**: {count.label} {int(ref[count.key])} "
                f"vs {', '.join(str(int(n)) for n in sorted(model_counts))}; re-run the references stage."
            )
    for name in report.unbeaten():
        notes.append(
            f"**No {report.task} model beats the trivial reference {name}** on {h.label} "
            f"({fmt(report.references[name][h.key])}): every trained model is worse on the mean."
        )
    return notes


def flag_notes(report: TaskReport) -> list[str]:
    flagged = [v for v in report.variants if report.flagged(v)]
    if not flagged:
        return []
    notes = [FLAG_NOTE]
    for variant in flagged:
        n, runs = report.n(variant), len(report.runs[variant])
        if n == 0:
            notes.append(f"{variant.name}: every run flagged: its numbers (in parentheses) are over all {runs}.")
        else:
            notes.append(f"{variant.name}: n = {n} of {runs} (flagged runs left out).")
    return notes


def table_notes(report: TaskReport) -> list[str]:
    h, notes = report.headline, []
    if any(report.n(v) == 1 for v in report.variants):
        notes.append("n = 1 for some models: no confidence interval, so nothing is claimed best (best means _italic_).")
    notes += flag_notes(report) + reference_notes(report)
    for variant in [v for v in report.variants if report.below(v, "trivial")]:
        below = ", ".join(report.below(variant, "trivial"))
        notes.append(f"{BELOW} {variant.name}: mean {h.label} worse than {below}: not ranked.")
    bars = report.role("bar")
    out = [v.name for v in report.variants if report.out_of_regime(v)]
    if bars and out:
        notes.append(
            f"{OUT} {', '.join(out)}: out of regime (the 95% interval of the mean {h.label} is not entirely "
            f"better than {', '.join(bars)})."
        )
    if report.soft:
        notes.append(
            "load CV: – for soft routing (top_k = 0 with a dense normaliser, softmax): every expert computes "
            "every token, so its load is uniform and its CV 0 by construction, not by balancing. The column "
            "is not comparable across gate types (top-k, sparse normalisers, soft) and no best is marked."
        )
    if report.stale_bench:
        stale = ", ".join(v.name for v in report.variants if v in report.stale_bench)
        notes.append(f"forward ms: – for {stale}: the benchmark JSON measured another config; re-run the benchmark.")
    return [f"- {n}" for n in notes]


def bases_markdown(task: str, bases: dict[str, dict]) -> list[str]:
    """The task's pretraining runs (the bases its variants fine-tune from), where their metrics exist."""
    if not bases:
        return []
    out = [f"### {task}: bases (pretraining)", "", "| base | steps | best val loss | train s |", "|---|---|---|---|"]
    for size, values in bases.items():
        cells = [fmt(values[k]) if k in values else "–" for k in ("steps", "best_val_loss", "wall_s")]
        out.append(f"| {task}-{size} | " + " | ".join(cells) + " |")
    return out + [""]


def markdown(reports: dict[str, TaskReport], bases: dict[str, dict] | None = None) -> str:
    bases = bases or {}
    out = ["# moelab study summary", "", NOTE, ""]
    for task, report in reports.items():
        out += [f"## {task}", "", *table(report), "", *table_notes(report), ""]
        out += bases_markdown(task, bases.get(task, {}))
        out += specialisation_markdown(report)
    out += ["## What the data supports", "", evidence.RULE, ""]
    for report in reports.values():
        out += evidence.markdown(report)
    return "\n".join(out)


SPECIALISATION_GATINGS = ("linear-sparsemax", "linear-softmax-top2")  # the variants whose experts are listed


def specialisation_markdown(report: TaskReport, per_expert: int = 5) -> list[str]:
    """The lowest seed's expert specialisation of each listed variant that has one."""
    chosen = [
        (v, r.specialisation)
        for v in report.variants
        if not v.dense and f"{v.router}-{v.gate}" in SPECIALISATION_GATINGS
        for r in report.runs[v][:1]
        if r.specialisation
    ]
    if not chosen:
        return []
    out = [
        f"### {report.task}: expert specialisation (last MoE layer, test split)",
        "",
        "Top input tokens each expert computed, with the share of that token's occurrences routed to "
        "the expert (100% for every expert under soft softmax routing). The lowest seed of each variant.",
        "",
    ]
    for variant, sp in chosen:
        out += [
            f"**{variant.name}** (MoE layer {sp.get('layer')})",
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


# ------------------------------------------------------------------ the stage
def report(
    params: Params,
    roots: Roots | None = None,
    out_dir: str | Path = "metrics",
    headline_path: str | Path | None = None,
    plots_dir: str | Path | None = "plots",
) -> dict:
    """Read the runs params.yaml asks for (data.py) and write out_dir/summary.{json,md}, the headline
    (default out_dir/study.json) and the figures into plots_dir (None: no figures). Nothing is written
    unless every requested run could be read. Returns the summary.json object."""
    roots = roots or Roots()
    reports = load(params, roots)
    bases = {task: read_bases(params, task, roots) for task in reports}
    out_dir = Path(out_dir)
    summary = summary_json(reports, bases)
    write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", markdown(reports, bases))
    write_json(Path(headline_path) if headline_path is not None else out_dir / "study.json", headline_json(reports))
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(reports, Path(plots_dir))
    return summary
