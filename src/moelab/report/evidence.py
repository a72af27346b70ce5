"""'What the data supports': the few comparisons a reader needs, each a paired-by-seed difference of
the headline metric with its 95% Student-t interval and a paired t-test, the p-values Holm-adjusted
within each family of each task; a sentence only where the adjusted p is below 0.05.

The rule (RULE below, printed in summary.md) says when it was fixed and what it replaced.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from ..stats import Interval, paired_difference
from ..study import Variant
from .data import TaskReport

ALPHA = 0.05  # family-wise error rate of each family (Holm)

RULE = (
    "Rule, fixed on 2026-12-05, before the study at this recipe was run; earlier commits used per-comparison "
    "intervals without Holm. Per task, on the headline metric (the task's first declared metric, test split), "
    "two families of comparisons: (1) every ranked MoE variant against the dense baseline, and (2) the ranked "
    "model with the best mean against every other ranked MoE variant (its comparison with dense is in (1)). A "
    "difference A − B is paired by seed over the seeds both have unflagged (flagged runs, see the tables, are "
    "left out); its paired t-test's two-sided p-value is Holm-adjusted within its family of its task, and a "
    "difference is called separated, and a sentence written, only where the adjusted p < 0.05. The raw 95% "
    "Student-t interval of the mean difference is shown beside it (moelab.stats.paired_difference). With fewer "
    "than 2 common seeds there is no test: it counts in its family as p = 1 and is never separated. Models "
    "worse than a trivial reference, or without an unflagged run, are not ranked and not compared. A model "
    "beats a reference (a fixed number on the same test examples) only where its 95% interval of the mean lies "
    "entirely on the better side; ▽ (out of regime): its interval is not entirely on the better side of the "
    "task's bar. The best marks of the tables are unpaired interval overlaps, not these tests. Holm controls "
    "the family-wise error of the comparisons made, but (2) still compares against the best mean, chosen after "
    "seeing the data."
)


@dataclass(frozen=True)
class Comparison:
    a: Variant
    b: Variant
    difference: Interval  # of a - b, paired by seed
    p: float | None  # two-sided paired t-test (None: fewer than 2 pairs)
    p_holm: float | None = None  # Holm-adjusted within its family

    @property
    def separated(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def paired_t_p(differences: list[float]) -> float | None:
    """Two-sided p-value of the one-sample t-test of the mean of paired differences against 0."""
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return None
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    if sd == 0:  # every seed moved by the same amount: certain unless that amount is 0
        return 1.0 if mean == 0 else 0.0
    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made non-decreasing
    in that order and capped at 1; returned in the input order."""
    m = len(p_values)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_family(family: list[Comparison]) -> list[Comparison]:
    """The family with p_holm set; a comparison without a test counts as p = 1 (it keeps p_holm None)."""
    adjusted = holm([1.0 if c.p is None else c.p for c in family])
    return [replace(c, p_holm=None if c.p is None else q) for c, q in zip(family, adjusted)]


def name(variant: Variant) -> str:
    return variant.name


def compare(report: TaskReport, a: Variant, b: Variant) -> Comparison | None:
    """The paired difference a - b of the headline metric over the unflagged seeds both have (None: none)."""
    key = report.headline.key
    va, vb = report.seed_values(a, key), report.seed_values(b, key)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    differences = [va[s] - vb[s] for s in seeds]
    return Comparison(a, b, paired_difference([va[s] for s in seeds], [vb[s] for s in seeds]), paired_t_p(differences))


def ranked(report: TaskReport) -> list[Variant]:
    return [v for v in report.variants if report.ranked(v)]


def best_variant(report: TaskReport) -> Variant | None:
    """The ranked model with the best headline mean (a tie goes to the dense baseline)."""
    models = ranked(report)
    if not models:
        return None
    sign = 1 if report.headline.higher_is_better else -1
    return max(models, key=lambda v: (sign * report.cells[v][report.headline.key]["mean"], v.dense))


def comparisons(report: TaskReport) -> tuple[list[Comparison], list[Comparison]]:
    """(every ranked MoE variant vs the dense baseline, the best model vs every other ranked MoE variant),
    each family Holm-adjusted on its own."""
    models = ranked(report)
    dense = [v for v in models if v.dense]
    vs_dense = [compare(report, v, dense[0]) for v in models if dense and not v.dense]
    best = best_variant(report)
    # the best model against the others, less the pairs already compared with dense
    vs_best = [compare(report, best, v) for v in models if best and v != best and not (best.dense or v.dense)]
    return holm_family([c for c in vs_dense if c]), holm_family([c for c in vs_best if c])


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


def p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def sentence(report: TaskReport, comp: Comparison) -> str:
    """'A beats B on perplexity (lower): -12.3 [-20.1, -4.5], Holm-adjusted p = 0.012, n = 3 seeds (paired).'
    Only for a separated comparison."""
    iv, higher = comp.difference, report.headline.higher_is_better
    winner, loser = (comp.a, comp.b) if (iv.mean > 0) == higher else (comp.b, comp.a)
    direction = "higher" if higher else "lower"
    return (
        f"{name(winner)} beats {name(loser)} on {report.headline.label} ({direction}): {name(comp.a)} − "
        f"{name(comp.b)} = {interval_text(iv)}, Holm-adjusted p = {p_text(comp.p_holm)}, n = {iv.n} seeds (paired)."
    )


def reference_lines(report: TaskReport) -> list[str]:
    """For each reference with a headline value: its role, which models beat it (95% interval entirely
    better), which are worse on the mean; in words, when no model beats a trivial one."""
    key, label = report.headline.key, report.headline.label
    models = [v for v in report.variants if report.n(v)]
    out = []
    for ref_name, ref in report.references.items():
        if key not in ref:
            continue
        beat = [v for v in models if report.beats(report.cells[v][key], ref[key])]
        below = [v for v in models if ref_name in report.below(v)]
        head = f"{ref_name} ({ref['role']} reference, {label} {fmt(ref[key])})"
        if ref["role"] == "trivial" and models and len(below) == len(models):
            out.append(f"- **No model beats {ref_name}**: every model's mean {label} is worse than {head}.")
            continue
        out.append(
            f"- {head}: beaten (95% interval entirely better) by {_names(beat) or 'no model'}"
            + (f"; worse on the mean: {_names(below)}" if below else "")
            + "."
        )
    return out


def regime_lines(report: TaskReport) -> list[str]:
    """Which models are in regime (95% interval entirely better than the task's bar)."""
    bars = report.role("bar")
    if not bars:
        return []
    models = [v for v in report.variants if report.n(v)]
    inside = [v for v in models if not report.out_of_regime(v)]
    return [
        f"- In regime (beat the bar {', '.join(bars)}): {_names(inside) or 'no model'}"
        + (
            f"; out of regime (▽): {_names([v for v in models if v not in inside])}"
            if len(inside) < len(models)
            else ""
        )
        + "."
    ]


def _names(variants: list[Variant]) -> str:
    return ", ".join(name(v) for v in variants)


def markdown(report: TaskReport) -> list[str]:
    """The task's 'What the data supports' block."""
    h = report.headline
    out = [f"### {report.task}: {h.label} ({'higher' if h.higher_is_better else 'lower'} is better)", ""]
    out += reference_lines(report) + regime_lines(report)
    unranked = [v for v in report.variants if not report.ranked(v)]
    if unranked:
        out.append(
            f"- Not ranked or compared (worse than a trivial reference, or every run flagged): {_names(unranked)}."
        )
    vs_dense, vs_best = comparisons(report)
    best = best_variant(report)
    dense = [v for v in report.variants if v.dense]
    if not dense:
        out.append("- MoE vs dense: no dense baseline in the study.")
    elif not report.ranked(dense[0]):
        out.append("- MoE vs dense: the dense baseline is not ranked, so not compared.")
    else:
        out += _claims("MoE vs dense", vs_dense, report)
    if best is None:
        out.append("- No model is ranked, so none is called best.")
    elif best.dense:
        out.append("- The best mean is the dense baseline's: its comparisons are those above.")
    else:
        out += _claims(f"best mean ({name(best)}) vs the others", vs_best, report)
    return out + comparison_table(vs_dense, vs_best) + [""]


def comparison_table(vs_dense: list[Comparison], vs_best: list[Comparison]) -> list[str]:
    every = [("vs dense", c) for c in vs_dense] + [("best vs others", c) for c in vs_best]
    if not every:
        return []
    out = ["", f"<details><summary>all {len(every)} comparisons (A − B, raw 95% CI, Holm-adjusted p)</summary>", ""]
    out += ["| family | A | B | A − B [95% CI] | seeds | p | Holm p | separated |", "|---|---|---|---|---|---|---|---|"]
    out += [
        f"| {family} | {name(c.a)} | {name(c.b)} | {interval_text(c.difference)} | {c.difference.n} | {p_text(c.p)} "
        f"| {p_text(c.p_holm)} | {'yes' if c.separated else 'no'} |"
        for family, c in every
    ]
    return out + ["", "</details>"]


def _claims(title: str, comps: list[Comparison], report: TaskReport) -> list[str]:
    if not comps:
        return [f"- {title}: no other ranked model with a common unflagged seed to compare with."]
    separated = [c for c in comps if c.separated]
    if not separated:
        untested = sum(c.p is None for c in comps)
        why = " (fewer than 2 common seeds: no test)" if untested == len(comps) else ""
        return [f"- {title}: no difference is separated (Holm-adjusted p < 0.05) in {len(comps)} comparison(s){why}."]
    return [f"- {title} ({len(separated)} of {len(comps)} separated, Holm-adjusted p < 0.05):"] + [
        f"  - {sentence(report, c)}" for c in separated
    ]
