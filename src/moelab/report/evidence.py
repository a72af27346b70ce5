"""'What the data supports': the few comparisons a reader needs, each a paired-by-seed difference of
the headline metric with its 95% Student-t interval, and a sentence only where the interval excludes 0.

The rule (RULE below, printed in summary.md) was fixed before any result was looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stats import Interval, paired_difference
from .data import DENSE, TaskReport

RULE = (
    "Rule, fixed before looking at any result: per task, on the headline metric (the task's first declared "
    "metric, test split), (1) every MoE variant against the dense baseline and (2) the model with the best mean "
    "against every other MoE variant (its comparison with dense is in (1)). A difference A − B is paired by seed "
    "number over the seeds both have, with the 95% Student-t interval of its mean "
    "(moelab.stats.paired_difference). A sentence is written only where that interval excludes 0; with fewer than"
    " 2 common seeds there is no interval and nothing is claimed. Models worse than a trivial reference are not "
    "ranked and not compared. A model beats a reference (a fixed number on the same test examples) only where its"
    " 95% interval of the mean lies entirely on the better side. The intervals are per comparison, not adjusted "
    "for multiplicity: among k comparisons without a real difference about 0.05 k exclude 0 by chance; and (2) "
    "compares against the best mean, chosen after seeing the data."
)


@dataclass(frozen=True)
class Comparison:
    a: tuple[str, str]
    b: tuple[str, str]
    difference: Interval  # of a - b, paired by seed

    @property
    def supported(self) -> bool:
        return self.difference.excludes_zero()


def name(cell: tuple[str, str]) -> str:
    return DENSE if cell[0] == DENSE else f"{cell[0]} {cell[1]}"


def compare(report: TaskReport, a: tuple[str, str], b: tuple[str, str]) -> Comparison | None:
    """The paired difference a - b of the headline metric over the seeds both have (None: no common seed)."""
    key = report.headline.key
    va, vb = report.seed_values(a, key), report.seed_values(b, key)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    return Comparison(a, b, paired_difference([va[s] for s in seeds], [vb[s] for s in seeds]))


def best_cell(report: TaskReport) -> tuple[str, str] | None:
    ranked = [c for c in report.models() if report.ranked(c)]
    if not ranked:
        return None
    sign = 1 if report.headline.higher_is_better else -1
    return max(ranked, key=lambda c: (sign * report.cells[c][report.headline.key]["mean"], c[0] == DENSE))


def comparisons(report: TaskReport) -> tuple[list[Comparison], list[Comparison]]:
    """(every ranked MoE variant vs the dense baseline, the best model vs every other ranked MoE variant)."""
    ranked = [c for c in report.models() if report.ranked(c)]
    dense = [c for c in ranked if c[0] == DENSE]
    vs_dense = [compare(report, c, dense[0]) for c in ranked if dense and c[0] != DENSE]
    best = best_cell(report)
    # the best model against the others, less the pairs already compared with dense
    vs_best = [compare(report, best, c) for c in ranked if best and c != best and DENSE not in (best[0], c[0])]
    return [c for c in vs_dense if c], [c for c in vs_best if c]


def fmt(value: float) -> str:
    return (
        f"{value:.3g}"
        if abs(value) >= 1e4 or (abs(value) < 1e-2 and value != 0)
        else f"{value:.3f}".rstrip("0").rstrip(".")
    )


def interval_text(iv: Interval) -> str:
    if iv.half_width is None:
        return f"{fmt(iv.mean)} (no interval, n = {iv.n})"
    return f"{fmt(iv.mean)} [{fmt(iv.low)}, {fmt(iv.high)}]"


def sentence(report: TaskReport, comp: Comparison) -> str:
    """'A has lower test perplexity than B: -12.3 [-20.1, -4.5], n = 3 seeds' (only for a supported one)."""
    iv, higher = comp.difference, report.headline.higher_is_better
    better = (iv.mean > 0) == higher
    word = ("higher" if iv.mean > 0 else "lower") + " " + report.headline.label
    quality = "better" if better else "worse"
    return f"{name(comp.a)} has {word} than {name(comp.b)} ({quality}): {interval_text(iv)}, n = {iv.n} seeds (paired)."


def reference_lines(report: TaskReport) -> list[str]:
    """For each reference: which models beat it (95% interval entirely better), and, in words, when no
    model beats a trivial one."""
    key, label = report.headline.key, report.headline.label
    out = []
    for ref_name, ref in report.references.items():
        if key not in ref:
            continue
        models = [c for c in report.models() if key in report.cells[c]]
        beat = [c for c in models if beats(report, report.cells[c][key], ref[key])]
        below = [c for c in models if ref_name in report.below(c)]
        kind = "trivial reference" if ref["trivial"] else "reference"
        head = f"{ref_name} ({kind}, {label} {fmt(ref[key])})"
        if models and len(below) == len(models):
            out.append(f"- **No model beats {ref_name}**: every model's mean {label} is worse than {head}.")
            continue
        out.append(
            f"- {head}: beaten (95% interval entirely better) by {_names(beat) or 'no model'}"
            + (f"; worse on the mean: {_names(below)}" if below else "")
            + "."
        )
    return out


def beats(report: TaskReport, stats: dict, reference: float) -> bool:
    """The cell's 95% interval of the mean lies entirely on the better side of the reference."""
    if stats["ci95"] is None:
        return False
    if report.headline.higher_is_better:
        return stats["mean"] - stats["ci95"] > reference
    return stats["mean"] + stats["ci95"] < reference


def _names(cells: list[tuple[str, str]]) -> str:
    return ", ".join(name(c) for c in cells)


def markdown(report: TaskReport) -> list[str]:
    """The task's 'What the data supports' block."""
    h = report.headline
    out = [f"### {report.task}: {h.label} ({'higher' if h.higher_is_better else 'lower'} is better)", ""]
    out += reference_lines(report)
    unranked = [c for c in report.models() if not report.ranked(c)]
    if unranked:
        out.append(f"- Not ranked or compared (worse than a trivial reference): {_names(unranked)}.")
    vs_dense, vs_best = comparisons(report)
    best = best_cell(report)
    dense = [c for c in report.models() if c[0] == DENSE]
    if not dense:
        out.append("- MoE vs dense: no dense baseline in the study.")
    elif not report.ranked(dense[0]):
        out.append("- MoE vs dense: the dense baseline is worse than a trivial reference, so not compared.")
    else:
        out += _claims("MoE vs dense", vs_dense, report)
    if best is None:
        out.append("- No model is ranked, so none is called best.")
    elif best[0] == DENSE:
        out.append("- The best mean is the dense baseline's: its comparisons are those above.")
    else:
        out += _claims(f"best mean ({name(best)}) vs the others", vs_best, report)
    every = vs_dense + vs_best
    if every:
        out += ["", f"<details><summary>all {len(every)} comparisons (A − B, 95% CI)</summary>", ""]
        out += ["| A | B | A − B [95% CI] | seeds | CI excludes 0 |", "|---|---|---|---|---|"]
        out += [
            f"| {name(c.a)} | {name(c.b)} | {interval_text(c.difference)} | {c.difference.n} | "
            f"{'yes' if c.supported else 'no'} |"
            for c in every
        ]
        out += ["", "</details>"]
    return out + [""]


def _claims(title: str, comps: list[Comparison], report: TaskReport) -> list[str]:
    if not comps:
        return [f"- {title}: no other ranked model with a common seed to compare with."]
    supported = [c for c in comps if c.supported]
    if not supported:
        without = sum(c.difference.half_width is None for c in comps)
        why = " (fewer than 2 common seeds: no interval)" if without == len(comps) else ""
        return [f"- {title}: no difference is separated from 0 in {len(comps)} comparison(s){why}."]
    return [f"- {title} ({len(supported)} of {len(comps)} separated):"] + [
        f"  - {sentence(report, c)}" for c in supported
    ]
