"""The report stage's figures (PNG, matplotlib Agg), one set per task under plots/:

  <task>_loss_curves.png      training (smoothed) and validation loss per variant, mean over its runs; a
                              panel per model size
  <task>_quality_flops.png    each quality metric of the task vs realised FLOPs/token: the references as
                              horizontal lines, 95% CI bars when n > 1; no Pareto front (see quality_flops)
  <task>_expert_load.png      share of tokens per expert, experts sorted by load within each run, the sorted
                              profiles averaged over runs (layers x load rank) for every MoE variant
  <task>_experts_per_token.png  how many experts each token used, variants with a sparse normaliser

Every figure is always written (a short message figure when its data is missing) so the stage's
declared outputs exist. Inputs: the TaskReports of data.py: every requested run's routing detail
(eval/s<seed>.routing.json) and DVCLive curves (study.run_paths(...).live / plots/metrics), flagged
runs included (a dead expert is what the expert-load figure is for).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..study import Variant  # noqa: E402
from .data import Run, TaskReport, layer_label  # noqa: E402

FIGURES = ("loss_curves", "quality_flops", "expert_load", "experts_per_token")
DENSE_COLOUR = (0.0, 0.0, 0.0, 1.0)


def write_plots(reports: dict[str, TaskReport], plots_dir: Path) -> list[Path]:
    """Write every figure of every task in `reports`; returns the paths written."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, report in reports.items():
        for name, fn in (
            ("loss_curves", loss_curves),
            ("quality_flops", quality_flops),
            ("expert_load", expert_load),
            ("experts_per_token", experts_per_token),
        ):
            fig = fn(report)
            path = plots_dir / f"{task}_{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


# ------------------------------------------------------------------ inputs
def read_tsv(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = next((k for k in (rows[0] if rows else {}) if k != "step"), None)
    return {int(r["step"]): float(r[key]) for r in rows if key and r.get(key) not in (None, "")}


def curves(run: Run) -> tuple[dict[int, float], dict[int, float]]:
    """(training, validation) loss of one run from its DVCLive directory ({} where not logged)."""
    metrics = run.live / "plots" / "metrics"
    return read_tsv(metrics / "train" / "loss.tsv"), read_tsv(metrics / "val" / "loss.tsv")


def _colours(variants: list[Variant]) -> dict[str, tuple]:
    """One colour per gating (router-gate), shared by its sizes; the dense baseline black."""
    cmap = plt.get_cmap("tab10")
    gatings = list(dict.fromkeys(_gating(v) for v in variants if not v.dense))
    return {g: cmap(i % 10) for i, g in enumerate(gatings)} | {"dense": DENSE_COLOUR}


def _gating(variant: Variant) -> str:
    return "dense" if variant.dense else f"{variant.router}-{variant.gate}"


def _sizes(report: TaskReport) -> list[str]:
    return list(dict.fromkeys(v.size for v in report.variants if not v.dense)) or [
        report.presets[v] for v in report.variants
    ]


def _message(title: str, text: str):
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def _mean_curve(series: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs at the steps every run logged."""
    steps = sorted(set.intersection(*(set(c) for c in series))) if series else []
    return np.array(steps), np.array([np.mean([c[s] for c in series]) for s in steps])


def _smooth(y: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    out, acc = np.empty_like(y), None
    for i, v in enumerate(y):
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


# ------------------------------------------------------------------ (1) loss curves
def loss_curves(report: TaskReport):
    task = report.task
    logged = {v: [c for c in map(curves, report.runs[v]) if c[0] or c[1]] for v in report.variants}
    logged = {v: runs for v, runs in logged.items() if runs}
    if not logged:
        return _message(
            f"{task}: loss curves", "no DVCLive loss curves under metrics/study/<task>/<variant>/train/live"
        )
    sizes = _sizes(report)
    colours = _colours(report.variants)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        # the dense baseline has one size: drawn in every panel as the reference
        for variant in [v for v in logged if v.dense or v.size == size]:
            runs = logged[variant]
            label = f"{variant.name} (n={len(runs)})"
            style = {"color": colours[_gating(variant)], "lw": 1.3 if variant.dense else 1.6}
            if variant.dense:
                style["ls"] = "--"
            x, y = _mean_curve([train for train, _ in runs if train])
            if len(x):
                ax.plot(x, _smooth(y), label=label, **style)
                label = None
            x, y = _mean_curve([val for _, val in runs if val])
            if len(x):
                ax.plot(x, y, marker="o", ms=5, **{**style, "ls": "none"}, label=label)
        ax.set_title(f"{task} — {size}  (line: train, EMA-smoothed; dots: validation)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (cross-entropy, nats)")
    _loss_limits(axes[0][0], [c for runs in logged.values() for c in runs])
    axes[0][-1].legend(loc="upper right", fontsize=8, title="variant (mean over runs)", title_fontsize=8)
    fig.suptitle(f"{task}: training and validation loss", fontsize=13)
    fig.tight_layout()
    return fig


def _loss_limits(ax, runs: list[tuple[dict, dict]]) -> None:
    """From just below the lowest loss to the highest smoothed training loss (the start for LM;
    classification rises before it falls)."""
    smoothed = [_smooth(np.array(list(train.values()))) for train, _ in runs if train]
    lo = min([min(val.values()) for _, val in runs if val] + [float(s.min()) for s in smoothed], default=0.0)
    top = max((float(s.max()) for s in smoothed), default=lo + 1)
    ax.set_ylim(lo - 0.1 * (top - lo), top + 0.05 * (top - lo))


# ------------------------------------------------------------------ (2) quality vs FLOPs
NO_FRONT = (
    "No Pareto front is drawn: a front through the means would order models whose differences the seeds do not "
    "separate; summary.md 'What the data supports' has the Holm-adjusted paired comparisons."
)


def quality_flops(report: TaskReport):
    task = report.task
    models = [v for v in report.variants if "flops_per_token" in report.cells[v]]
    columns = [q for q in report.quality if any(q.key in report.cells[v] for v in models)]
    if not models or not columns:
        return _message(f"{task}: quality vs FLOPs/token", "no quality metric with FLOPs/token over unflagged runs")
    colours = _colours(report.variants)
    markers = dict(zip(dict.fromkeys(report.presets[v] for v in models), "osD^vP*X"))
    ncols = min(2, len(columns))  # ROUGE-1/2/L/Lsum: a grid, not one long row
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 5.2 * nrows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.axis("off")
    for ax, column in zip(axes.flat, columns):
        _quality_panel(ax, report, column, [v for v in models if column.key in report.cells[v]], colours, markers)
    handles = [
        plt.Line2D(
            [], [], color=colours[_gating(v)], marker=markers[report.presets[v]], ls="none", label=_label(report, v)
        )
        for v in models
    ]
    if any(not report.ranked(v) for v in models):
        handles.append(
            plt.Line2D(
                [], [], color="0.3", marker="o", mfc="white", ls="none", label="▼ worse than a trivial reference"
            )
        )
    if any(report.out_of_regime(v) for v in models):
        handles.append(plt.Line2D([], [], color="none", label="▽ headline interval not beyond the bar (out of regime)"))
    if report.references:
        handles.append(plt.Line2D([], [], color="0.35", ls="--", label="reference (same test examples)"))
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    unbeaten = report.unbeaten()
    title = f"{task}: quality vs realised FLOPs/token (over unflagged runs)"
    if unbeaten:
        title += f"; no model beats the trivial reference {', '.join(unbeaten)}"
    fig.suptitle(title, fontsize=12, color="darkred" if unbeaten else "black")
    fig.text(0.01, -0.02, NO_FRONT, fontsize=8, ha="left", va="top", wrap=True)
    fig.tight_layout()
    return fig


def _label(report: TaskReport, variant: Variant) -> str:
    """'linear-sparsemax-e8 (n=3)' or '(n=2 of 3)' where a run is flagged."""
    n, runs = report.n(variant), len(report.runs[variant])
    return f"{variant.name} (n={n}{'' if n == runs else f' of {runs}'})"


def _quality_panel(ax, report: TaskReport, column, models: list[Variant], colours: dict, markers: dict) -> None:
    """One quality metric vs FLOPs/token: the models (over their unflagged runs), the references as lines.
    The y-axis spans the models' intervals and the bar, so that models a few percent apart stay apart; a
    reference far outside it (a unigram at 10x the models' perplexity) is named in the corner instead."""
    for variant in models:
        _point(ax, report, column, variant, colours[_gating(variant)], markers[report.presets[variant]])
    low, high = _quality_limits(report, column, models)
    off_axis = []
    for name, ref in report.references.items():
        if column.key not in ref:
            continue
        if not low <= ref[column.key] <= high:
            off_axis.append(f"{name} ({ref['role']}): {ref[column.key]:.4g}")
            continue
        ax.axhline(ref[column.key], color="0.35", ls="--", lw=1, zorder=2)
        ax.annotate(
            f"{name} ({ref['role']})",
            (0.01, ref[column.key]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="0.25",
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_ylim(low, high)
    if off_axis:
        ax.text(
            0.99,
            0.98,
            "off the axis:\n" + "\n".join(off_axis),
            transform=ax.transAxes,
            fontsize=7,
            ha="right",
            va="top",
            color="0.25",
            bbox={"fc": "white", "ec": "0.7", "alpha": 0.9},
        )
    ax.set_xscale("log")
    ax.set_xlabel("realised forward FLOPs / token (log)")
    ax.set_ylabel(f"{column.label} ({'higher' if column.higher_is_better else 'lower'} is better)")
    n = max(report.cells[v][column.key]["n"] for v in models)
    ax.set_title(f"{report.task}: {column.label} vs compute" + ("" if n > 1 else "  (n = 1: no error bars)"))
    ax.grid(alpha=0.3, which="both")


def _quality_limits(report: TaskReport, column, models: list[Variant]) -> tuple[float, float]:
    """The y-range of a quality panel: every model's 95% interval and the bar reference (the line that
    decides the regime), padded by 8%; trivial and context references are drawn only where they fall in it."""
    values = []
    for variant in models:
        q = report.cells[variant][column.key]
        values += [q["mean"] - (q["ci95"] or 0.0), q["mean"] + (q["ci95"] or 0.0)]
    values += [ref[column.key] for ref in report.references.values() if ref["role"] == "bar" and column.key in ref]
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def _point(ax, report: TaskReport, column, variant: Variant, colour, marker: str) -> None:
    """One model: mean and 95% interval of quality and FLOPs/token. The legend names it (names beside the
    points overlapped wherever variants share a FLOP count); only the marks ▼ (not ranked) and ▽ (out of
    regime) are written beside it."""
    q, f = report.cells[variant][column.key], report.cells[variant]["flops_per_token"]
    ranked = report.ranked(variant)
    ax.errorbar(
        f["mean"],
        q["mean"],
        yerr=q["ci95"] or None,
        xerr=f["ci95"] or None,
        fmt=marker,
        color=colour,
        mfc=colour if ranked else "white",
        ms=7,
        capsize=3,
        zorder=3,
    )
    marks = ("▼" if not ranked else "") + ("▽" if column == report.headline and report.out_of_regime(variant) else "")
    if marks:
        ax.annotate(marks, (f["mean"], q["mean"]), fontsize=8, xytext=(5, 4), textcoords="offset points", color="0.25")


# ------------------------------------------------------------------ (3) expert load
def sorted_load_profile(runs: list[Run]) -> list[tuple[str, np.ndarray]]:
    """Per MoE layer, (its label, the mean over runs of that run's expert shares sorted in descending order).

    Expert indices are arbitrary within a run (expert 3 of seed 0 has nothing to do with expert 3 of seed
    1), so shares are never averaged by index: each run's profile is sorted first, and the mean is of the
    k-th busiest experts."""
    return _layer_means(runs, lambda layer: np.sort(np.asarray(layer.get("expert_share") or [], dtype=float))[::-1])


def _layer_means(runs: list[Run], array_of) -> list[tuple[str, np.ndarray]]:
    """Per MoE layer, (its label, the mean over runs of array_of(that layer's statistics)), arrays of unequal
    length padded with zeros; runs without statistics for every layer are left out."""
    per_run = [[array_of(layer) for layer in r.layers] for r in runs]
    per_run = [layers for layers in per_run if layers and all(len(a) for a in layers)]
    if not per_run:
        return []
    first = next(r.layers for r in runs if r.layers)
    out = []
    for i in range(min(len(layers) for layers in per_run)):
        width = max(len(layers[i]) for layers in per_run)
        mean = np.mean([np.pad(layers[i], (0, width - len(layers[i]))) for layers in per_run], axis=0)
        out.append((layer_label(first[i].get("module"), i), mean))
    return out


def expert_load(report: TaskReport):
    task = report.task
    data = {v: sorted_load_profile(report.runs[v]) for v in report.variants if not v.dense}
    data = {v: layers for v, layers in data.items() if layers}
    if not data:
        return _message(f"{task}: expert load", "no per-layer routing statistics in eval/s<seed>.routing.json")
    vmax = max(float(a.max()) for layers in data.values() for _, a in layers)
    max_e = max(len(a) for layers in data.values() for _, a in layers)
    fig, axes = plt.subplots(
        len(data), 1, squeeze=False, figsize=(max(4.0, 0.42 * max_e) + 2.2, 1.25 * len(data) + 1.4)
    )
    image = None
    for ax, (variant, layers) in zip(axes[:, 0], data.items()):
        grid = np.array([profile for _, profile in layers])  # [layers, load rank]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(grid.shape[0]), [label for label, _ in layers], fontsize=7)
        ax.set_xticks(range(grid.shape[1]), [str(i + 1) for i in range(grid.shape[1])], fontsize=6)
        runs = len(report.runs[variant])
        ax.set_title(f"{variant.name} ({runs} runs)   (uniform = {1 / grid.shape[1]:.3f})", fontsize=8)
    axes[-1][0].set_xlabel("expert, by load within each run (1 = busiest)", fontsize=8)
    fig.suptitle(
        f"{task}: share of computed token slots per expert (test split)\n"
        "each run's experts sorted by load, then the sorted profiles averaged over runs (flagged runs included)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.015, 0.7)), label="share of tokens")
    return fig


# ------------------------------------------------------------------ (4) experts per token
def mean_histograms(runs: list[Run]) -> list[tuple[str, np.ndarray]]:
    """Per MoE layer, (its label, the mean over runs of its experts-per-token histogram): bin i counts the
    tokens that used i experts, the same meaning in every run, so bins can be averaged."""
    return _layer_means(runs, lambda layer: np.asarray(layer.get("experts_per_token_hist") or [], dtype=float))


def experts_per_token(report: TaskReport):
    task = report.task
    sparse = [v for v in report.variants if not v.dense and any(r.sparse for r in report.runs[v])]
    if not sparse:
        return _message(f"{task}: experts per token", "no sparsemax / entmax variant in the study")
    hists = {v: mean_histograms(report.runs[v]) for v in sparse}
    hists = {v: layers for v, layers in hists.items() if layers}
    if not hists:
        return _message(
            f"{task}: experts per token", "no experts_per_token_hist in the routing detail: re-run the evaluate stage"
        )
    sizes = [s for s in _sizes(report) if any(v.size == s for v in hists)]
    colours = _colours(report.variants)
    n_layers = max(len(layers) for layers in hists.values())
    fig, axes = plt.subplots(len(sizes), n_layers, figsize=(5.5 * n_layers, 3.3 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        group = [v for v in hists if v.size == size]
        width = 0.8 / len(group)
        for layer in range(n_layers):
            ax = axes[row][layer]
            for j, variant in enumerate(group):
                if layer >= len(hists[variant]):
                    continue
                label, h = hists[variant][layer]
                frac = h / max(h.sum(), 1.0)
                mean = float((np.arange(len(h)) * frac).sum())
                offsets = np.arange(len(h)) + (j - (len(group) - 1) / 2) * width
                colour = colours[_gating(variant)]
                ax.bar(offsets, frac, width=width, color=colour, label=f"{variant.name} (mean {mean:.2f})")
                ax.set_title(f"{task} {size} — MoE {label}", fontsize=10)
            ax.set_xlabel("experts used by a token")
            ax.set_ylabel("fraction of tokens")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
    fig.suptitle(f"{task}: distribution of experts per token (test split, sparse normalisers, mean over runs)")
    fig.tight_layout()
    return fig
