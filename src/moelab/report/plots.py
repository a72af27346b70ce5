"""The report stage's figures (PNG, matplotlib Agg), one set per task under plots/:

  <task>_loss_curves.png      training (smoothed) and validation loss per variant; a panel per model size
  <task>_quality_flops.png    each quality metric of the task vs realised FLOPs/token: the references as
                              horizontal lines, 95% CI bars when n > 1, the Pareto front of the ranked
                              models (those worse than a trivial reference are hollow and never on it)
  <task>_expert_load.png      share of tokens per expert (layers x experts heatmap) for every MoE variant
  <task>_experts_per_token.png  how many experts each token used, variants with a sparse normaliser

Every figure is always written (a short message figure when its data is missing) so the stage's
declared outputs exist. Inputs: the TaskReports of data.py and, per seed, the routing detail
(eval/s<seed>.routing.json) and DVCLive curves (train/live/s<seed>/plots/metrics).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import read_json  # noqa: E402
from .data import DENSE, TaskReport, normaliser_sparse, run_config, seed_files, size_order  # noqa: E402

FIGURES = ("loss_curves", "quality_flops", "expert_load", "experts_per_token")


def write_plots(metrics_dir: Path, plots_dir: Path, reports: dict[str, TaskReport]) -> list[Path]:
    """Write every figure of every task in `reports`; returns the paths written."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(metrics_dir)
    written = []
    for task, report in reports.items():
        task_runs = runs.get(task, [])
        for name, fn, data in (
            ("loss_curves", loss_curves, task_runs),
            ("quality_flops", quality_flops, report),
            ("expert_load", expert_load, task_runs),
            ("experts_per_token", experts_per_token, task_runs),
        ):
            fig = fn(task, data)
            path = plots_dir / f"{task}_{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


# ------------------------------------------------------------------ inputs
def load_runs(metrics_dir: Path) -> dict:
    """{task: [run]}; run: gating, size, seed, norm, eval (dict), train/val loss curves ({step: loss})."""
    runs: dict = defaultdict(list)
    for eval_path in seed_files(Path(metrics_dir), "eval"):
        config = run_config(eval_path)
        if not (config.get("task") and config.get("gating") and config.get("preset")):
            continue
        ev = read_json(eval_path)
        routing = eval_path.with_name(f"{eval_path.stem}.routing.json")
        ev["layers"] = read_json(routing).get("layers", []) if routing.exists() else []
        live = eval_path.parent.parent / "train" / "live" / eval_path.stem / "plots" / "metrics"
        runs[config["task"]].append(
            {
                "gating": config["gating"],
                "size": config["preset"],
                "seed": config.get("seed"),
                "sparse": normaliser_sparse(config) is True,
                "eval": ev,
                "train": read_tsv(live / "train" / "loss.tsv"),
                "val": read_tsv(live / "val" / "loss.tsv"),
            }
        )
    return runs


def read_tsv(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = next((k for k in (rows[0] if rows else {}) if k != "step"), None)
    return {int(r["step"]): float(r[key]) for r in rows if key and r.get(key) not in (None, "")}


def _colours(gatings: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    moe = [g for g in gatings if g != DENSE]
    out = {g: cmap(i % 10) for i, g in enumerate(moe)}
    out[DENSE] = (0.0, 0.0, 0.0, 1.0)
    return out


def _sizes(runs: list[dict]) -> list[str]:
    sizes = sorted({r["size"] for r in runs if r["gating"] != DENSE}) or sorted({r["size"] for r in runs})
    return sorted(sizes, key=size_order)


def _message(title: str, text: str):
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def _mean_curve(curves: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the steps every seed logged."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return np.array(steps), np.array([np.mean([c[s] for c in curves]) for s in steps])


def _smooth(y: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    out, acc = np.empty_like(y), None
    for i, v in enumerate(y):
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


# ------------------------------------------------------------------ (1) loss curves
def loss_curves(task: str, runs: list[dict]):
    runs = [r for r in runs if r["train"] or r["val"]]
    if not runs:
        return _message(f"{task}: loss curves", "no DVCLive loss curves under metrics/<task>/<variant>/s*/live")
    sizes = _sizes(runs)
    gatings = sorted({r["gating"] for r in runs})
    colours = _colours(gatings)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for gating in gatings:
            # the dense baseline has one size: drawn in every panel as the reference
            group = [r for r in runs if r["gating"] == gating and (r["size"] == size or gating == DENSE)]
            if not group:
                continue
            n = len(group)
            label = f"{gating} (n={n})" if n > 1 else gating
            style = {"color": colours[gating], "lw": 1.6 if gating != DENSE else 1.3}
            if gating == DENSE:
                style["ls"] = "--"
            x, y = _mean_curve([r["train"] for r in group if r["train"]])
            if len(x):
                ax.plot(x, _smooth(y), label=label, **style)
                label = None
            x, y = _mean_curve([r["val"] for r in group if r["val"]])
            if len(x):
                ax.plot(x, y, marker="o", ms=5, **{**style, "ls": "none"}, label=label)
        ax.set_title(f"{task} — {size}  (line: train, EMA-smoothed; dots: validation)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (cross-entropy, nats)")
    lo = min(min(r["val"].values(), default=math.inf) for r in runs)
    lo = min(lo, min(min(_smooth(np.array(list(r["train"].values()))), default=math.inf) for r in runs if r["train"]))
    # top: the highest smoothed training loss (the start for LM; classification rises before it falls)
    top = max((float(_smooth(np.array(list(r["train"].values()))).max()) for r in runs if r["train"]), default=lo + 1)
    axes[0][0].set_ylim(lo - 0.1 * (top - lo), top + 0.05 * (top - lo))
    axes[0][-1].legend(loc="upper right", fontsize=8, title="gating (mean over seeds)", title_fontsize=8)
    fig.suptitle(f"{task}: training and validation loss", fontsize=13)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ (2) quality vs FLOPs
def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (x, lower better) and quality (y)."""
    sign = -1 if higher_is_better else 1
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and sign * y2 <= sign * y) and (x2 < x or sign * y2 < sign * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def front_cells(report: TaskReport, column, cells: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The Pareto front (FLOPs/token vs one quality column) of the ranked cells, by FLOPs: a model
    worse than a trivial reference is never on it."""
    ranked = [c for c in cells if report.ranked(c)]
    pts = [(report.cells[c]["flops_per_token"]["mean"], report.cells[c][column.key]["mean"]) for c in ranked]
    return [ranked[i] for i in pareto_front(pts, column.higher_is_better)]


def _seeds_label(report: TaskReport, gating: str) -> str:
    """'gating (n=3)': the seeds per cell of a gating (a range when its sizes differ)."""
    ns = sorted(
        {m[report.headline.key]["n"] for (g, _), m in report.cells.items() if g == gating and report.headline.key in m}
    )
    n = "?" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"{gating} (n={n})"


def quality_flops(task: str, report: TaskReport):
    cells = [c for c in report.models() if "flops_per_token" in report.cells[c]]
    columns = [q for q in report.quality if any(q.key in report.cells[c] for c in cells)]
    if not cells or not columns:
        return _message(f"{task}: quality vs FLOPs/token", "no quality metric with FLOPs/token in the summary")
    gatings = sorted({g for g, _ in cells})
    colours = _colours(gatings)
    sizes = sorted({s for _, s in cells}, key=size_order)
    markers = dict(zip(sizes, "osD^vP*X"))
    ncols = min(2, len(columns))  # ROUGE-1/2/L/Lsum: a grid, not one long row
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 5.2 * nrows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.axis("off")
    for ax, column in zip(axes.flat, columns):
        _quality_panel(ax, report, column, [c for c in cells if column.key in report.cells[c]], colours, markers)
    handles = [
        plt.Line2D([], [], color=colours[g], marker="o", ls="none", label=_seeds_label(report, g)) for g in gatings
    ]
    handles += [plt.Line2D([], [], color="0.3", marker=markers[s], ls="none", label=f"size {s}") for s in sizes]
    handles += [plt.Line2D([], [], color="0.6", lw=6, alpha=0.35, label="Pareto front (black edge)")]
    if any(not report.ranked(c) for c in cells):
        handles += [
            plt.Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                mfc="white",
                ls="none",
                label="▼ worse than a trivial reference: not ranked",
            )
        ]
    if report.references:
        handles += [plt.Line2D([], [], color="0.35", ls="--", label="reference (same test examples)")]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    unbeaten = report.unbeaten()
    if unbeaten:
        fig.suptitle(
            f"{task}: no model beats the trivial reference {', '.join(unbeaten)}", fontsize=12, color="darkred"
        )
    fig.tight_layout()
    return fig


def _quality_panel(ax, report: TaskReport, column, cells: list, colours: dict, markers: dict) -> None:
    """One quality metric vs FLOPs/token: references as lines, the ranked models' Pareto front."""
    front = front_cells(report, column, cells)
    ax.plot(
        [report.cells[c]["flops_per_token"]["mean"] for c in front],
        [report.cells[c][column.key]["mean"] for c in front],
        "-",
        color="0.6",
        lw=6,
        alpha=0.35,
        zorder=1,
    )
    for cell in cells:
        _point(ax, report, column, cell, colours[cell[0]], markers[cell[1]], cell in front)
    for name, ref in report.references.items():
        if column.key in ref:
            ax.axhline(ref[column.key], color="0.35", ls="--", lw=1, zorder=2)
            ax.annotate(
                f"{name} ({'trivial ' if ref['trivial'] else ''}reference)",
                (0.01, ref[column.key]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="0.25",
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("realised forward FLOPs / token (log)")
    ax.set_ylabel(f"{column.label} ({'higher' if column.higher_is_better else 'lower'} is better)")
    n = max(report.cells[c][column.key]["n"] for c in cells)
    ax.set_title(f"{report.task}: {column.label} vs compute" + ("" if n > 1 else "  (n = 1: no error bars)"))
    ax.grid(alpha=0.3, which="both")


def _point(ax, report: TaskReport, column, cell, colour, marker: str, on_front: bool) -> None:
    q, f = report.cells[cell][column.key], report.cells[cell]["flops_per_token"]
    ranked = report.ranked(cell)
    ax.errorbar(
        f["mean"],
        q["mean"],
        yerr=q["ci95"] or None,
        xerr=f["ci95"] or None,
        fmt=marker,
        color=colour,
        mfc=colour if ranked else "white",
        ms=9 if on_front else 7,
        capsize=3,
        mec="black" if on_front else colour,
        mew=1.5 if on_front else 1.0,
        zorder=3,
    )
    label = DENSE if cell[0] == DENSE else f"{cell[0]} {cell[1]}"
    ax.annotate(
        label + ("" if ranked else " ▼"),
        (f["mean"], q["mean"]),
        fontsize=7,
        xytext=(5, 4),
        textcoords="offset points",
        color="0.25",
    )


# ------------------------------------------------------------------ (3) expert load
def _mean_layers(group: list[dict], field: str) -> list[np.ndarray]:
    per_run = [[np.array(layer.get(field) or [], dtype=float) for layer in r["eval"].get("layers", [])] for r in group]
    per_run = [layers for layers in per_run if layers and all(len(a) for a in layers)]
    if not per_run:
        return []
    n_layers = min(len(layers) for layers in per_run)
    out = []
    for i in range(n_layers):
        width = max(len(layers[i]) for layers in per_run)
        out.append(np.mean([np.pad(layers[i], (0, width - len(layers[i]))) for layers in per_run], axis=0))
    return out


def expert_load(task: str, runs: list[dict]):
    runs = [r for r in runs if r["gating"] != DENSE and r["eval"].get("layers")]
    if not runs:
        return _message(f"{task}: expert load", "no per-layer routing statistics in eval.json")
    sizes = _sizes(runs)
    gatings = sorted({r["gating"] for r in runs})
    data = {
        (g, s): _mean_layers([r for r in runs if r["gating"] == g and r["size"] == s], "expert_share")
        for g in gatings
        for s in sizes
    }
    vmax = max((float(a.max()) for v in data.values() for a in v), default=1.0)
    max_e = max((len(a) for v in data.values() for a in v), default=8)
    fig, axes = plt.subplots(
        len(gatings),
        len(sizes),
        squeeze=False,
        figsize=(max(4.0, 0.42 * max_e) * len(sizes) + 1.2, 1.25 * len(gatings) + 1.2),
    )
    image = None
    for r, g in enumerate(gatings):
        for c, s in enumerate(sizes):
            ax = axes[r][c]
            layers = data[(g, s)]
            if not layers:
                ax.axis("off")
                continue
            grid = np.array(layers)  # [layers, experts]
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_yticks(range(grid.shape[0]), [f"L{i}" for i in range(grid.shape[0])], fontsize=7)
            ax.set_xticks(range(grid.shape[1]), [str(i) for i in range(grid.shape[1])], fontsize=6)
            ax.set_title(f"{g} {s}   (uniform = {1 / grid.shape[1]:.3f})", fontsize=8)
            if r == len(gatings) - 1:
                ax.set_xlabel("expert", fontsize=8)
            if c == 0:
                ax.set_ylabel("MoE layer", fontsize=8)
    fig.suptitle(f"{task}: share of computed token slots per expert (test split, mean over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    if image is not None:
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
        fig.colorbar(image, cax=cax, label="share of tokens")
    return fig


# ------------------------------------------------------------------ (4) experts per token
def experts_per_token(task: str, runs: list[dict]):
    sparse = [r for r in runs if r["gating"] != DENSE and r["sparse"]]
    if not sparse:
        return _message(f"{task}: experts per token", "no sparsemax / entmax variant in the study")
    with_hist = [r for r in sparse if any(layer.get("experts_per_token_hist") for layer in r["eval"].get("layers", []))]
    if not with_hist:
        return _message(
            f"{task}: experts per token",
            "eval.json has no experts_per_token_hist (written by evaluate since this report "
            "version): re-run the evaluate stage",
        )
    sizes = _sizes(with_hist)
    gatings = sorted({r["gating"] for r in with_hist})
    colours = _colours(gatings)
    n_layers = max(len(r["eval"]["layers"]) for r in with_hist)
    fig, axes = plt.subplots(len(sizes), n_layers, figsize=(5.5 * n_layers, 3.3 * len(sizes)), squeeze=False)
    for row, s in enumerate(sizes):
        for layer in range(n_layers):
            ax = axes[row][layer]
            width = 0.8 / max(len(gatings), 1)
            for j, g in enumerate(gatings):
                hists = _mean_layers(
                    [r for r in with_hist if r["gating"] == g and r["size"] == s], "experts_per_token_hist"
                )
                if layer >= len(hists):
                    continue
                h = hists[layer]
                frac = h / max(h.sum(), 1.0)
                mean = float((np.arange(len(h)) * frac).sum())
                ax.bar(
                    np.arange(len(h)) + (j - (len(gatings) - 1) / 2) * width,
                    frac,
                    width=width,
                    color=colours[g],
                    label=f"{g} (mean {mean:.2f})",
                )
            ax.set_title(f"{task} {s} — MoE layer {layer}", fontsize=10)
            ax.set_xlabel("experts used by a token")
            ax.set_ylabel("fraction of tokens")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
    fig.suptitle(f"{task}: distribution of experts per token (test split, sparse normalisers)", fontsize=12)
    fig.tight_layout()
    return fig
