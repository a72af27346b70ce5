"""One figure per claim, plots/claims_<claim>.png: a panel per part showing its effect with the
reported interval (thick) and, for equivalence / non-inferiority, the interval the rule used (thin),
the zero (or ratio 1) line, the margins and (variance ratio) the published ratio's floor; the colour
is the part's verdict (out of regime: orange, manipulation checks: olive when passed); a trend part
adds a panel of the cell means against x. Claims with no part run get no figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from . import verdicts  # noqa: E402
from .spec import METRICS  # noqa: E402

COLOURS = {
    verdicts.REPRODUCED: "tab:green",
    verdicts.EQUIVALENT: "tab:green",
    verdicts.PASSED: "tab:olive",
    verdicts.REFUTED: "tab:red",
    verdicts.FAILED: "tab:red",
    verdicts.ABSENT: "tab:purple",
    verdicts.OUT_OF_REGIME: "tab:orange",
    verdicts.INCONCLUSIVE: "tab:gray",
    verdicts.UNDECIDED: "tab:gray",
    verdicts.MEASURED: "tab:blue",
    verdicts.NOT_RUN: "lightgray",
}


def write_plots(report: dict, plots_dir: Path) -> list[Path]:
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, claim in report["claims"].items():
        if claim["verdict"] == verdicts.NOT_RUN:
            continue
        fig = claim_figure(name, claim)
        path = plots_dir / f"claims_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def claim_figure(name: str, claim: dict):
    parts = list(claim["parts"].items())
    trends = [(part_name, p) for part_name, p in parts if p["kind"] == "trend" and p["verdict"] != verdicts.NOT_RUN]
    rows = len(parts) + len(trends)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.6 * rows + 0.8), squeeze=False)
    for ax, (part_name, part) in zip(axes[:, 0], parts):
        effect_panel(ax, part_name, part)
    for ax, (part_name, part) in zip(axes[len(parts) :, 0], trends):
        trend_panel(ax, part_name, part)
    fig.suptitle(f"{name}: {claim['verdict']}", fontsize=11)
    fig.tight_layout()
    return fig


def effect_panel(ax, part_name: str, part: dict) -> None:
    colour = COLOURS.get(part["verdict"], "tab:gray")
    ax.set_yticks([])
    role = {"manipulation": " (manipulation check)", "measurement": " (measured)"}.get(part.get("role"), "")
    title = f"{part.get('label') or part_name}{role} — {verdicts.label(part)}"
    if part.get("estimate") is None:  # not run, or no seed finished in every cell
        ax.text(0.5, 0.5, f"{part['verdict']}: {part.get('why', '')}", ha="center", va="center", fontsize=8, wrap=True)
        ax.set_xticks([])
        ax.set_title(title, fontsize=9)
        return
    ratio = part["kind"] == "variance_ratio"
    reference = 1.0 if ratio else 0.0
    ax.axvline(reference, color="black", linewidth=0.8)
    if part.get("threshold") is not None:
        ax.axvline(part["threshold"], color="tab:purple", linestyle=":", linewidth=0.8)
    margin = part.get("margin")
    if margin is not None:
        for bound in (-margin, margin) if part["kind"] == "equivalence" else (margin,):
            ax.axvline(bound, color="tab:blue", linestyle="--", linewidth=0.8)
    if part.get("test_low") is not None:
        ax.plot([part["test_low"], part["test_high"]], [0.25, 0.25], color=colour, linewidth=1.2)
    if part["low"] is not None:
        ax.plot([part["low"], part["high"]], [0, 0], color=colour, linewidth=4, solid_capstyle="butt")
    ax.plot([part["estimate"]], [0], "o", color="black", markersize=5)
    ax.set_ylim(-0.6, 0.6)
    if ratio:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 0.4, not 4 x 10^-1
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(f"variance ratio (a / b), {part['level']:.0%} interval", fontsize=8)
    else:
        unit = METRICS[part["metric"]][1]
        what = "slope per doubling" if part["kind"] == "trend" else "paired difference a - b"
        intervals = f"thick {part['level']:.0%}" + (
            f", thin {part['test_level']:.0%} interval" if part.get("test_low") is not None else " interval"
        )
        ax.set_xlabel(f"{what}{f' ({unit})' if unit else ''}: {intervals}", fontsize=8)
    ax.set_title(title, fontsize=9)


def trend_panel(ax, part_name: str, part: dict) -> None:
    """The metric of every cell against x: one thin line per seed, the mean over seeds in black."""
    x = part["x_values"]
    per_cell = [part["values"][c] for c in part["cells"]]
    for s in range(len(per_cell[0])):
        ax.plot(x, [cell[s] for cell in per_cell], color="tab:gray", linewidth=0.6, alpha=0.7)
    ax.plot(x, [sum(cell) / len(cell) for cell in per_cell], "o-", color="black")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(part.get("x", "x"), fontsize=8)
    ax.set_ylabel(METRICS[part["metric"]][0], fontsize=8)
    ax.set_title(f"{part_name}: per seed (gray) and mean", fontsize=9)
