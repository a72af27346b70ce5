"""The verdict rules, fixed before any run (claims/params.yaml repeats them in words).

Every input is per-seed values aligned by seed (index i of `a` and `b` is the same seed), so each
test is paired: the seed-to-seed variation the cells share cancels. Each rule also gives the
p-value of the test behind the verdict it reached, on one scale: the rule decides exactly when
p < alpha (= 1 - level), which is what Holm's procedure adjusts.

  in regime        takes precedence, for a part on a quality metric (test loss, test ppl, val loss): out
                   of regime when any of its cells' `level` upper bound of mean test loss is not below
                   the bar (the Kneser-Ney bigram's test loss on the same split); never inconclusive.
                   (A part may name the cells that decide it, regime_cells: not the cell the claim
                   expects to fail.) The rule's own verdict is kept beside it (rule_verdict).
  difference       reproduced: the `level` interval of mean(a - b) excludes 0 on the claimed side;
                   refuted: it excludes 0 on the other side; otherwise inconclusive.
                   p: the paired t-test's two-sided p-value.
  equivalence      TOST at alpha: equivalent when the (1 - 2 alpha) interval lies inside
                   (-margin, +margin); refuted when it lies entirely outside; otherwise inconclusive.
                   p: TOST's (the larger one-sided p); refuted: the one-sided p of lying beyond the margin.
  non_inferiority  a is not worse than b by more than margin (direction: which way is better):
                   with lower better, reproduced when the (1 - 2 alpha) interval's upper end is
                   < margin, refuted when its lower end is > margin; otherwise inconclusive.
                   p: the one-sided p of the side the verdict claims.
  trend            per seed, the least-squares slope of the values against log2(x); then the
                   difference rule on the slopes.
  variance_ratio   var(a) / var(b) with the Pitman-Morgan `level` interval: reproduced when it lies
                   on the claimed side of 1, refuted when on the other; "effect absent at this scale"
                   when it excludes the published ratio's floor (the smallest ratio the paper's
                   printed spreads allow: published_ratio_floor); otherwise inconclusive.
                   p: the Pitman-Morgan test's two-sided p at 1 (or at the floor).
  roles            a manipulation part (it only confirms that an intervention moves what it
                   optimises) reads "manipulation check: passed / failed / inconclusive"; a
                   measurement part reads "measured" (an effect, no verdict).
  Holm             across the claim parts of the whole study (family-wise error at alpha): a part's
                   verdict other than inconclusive stands only when its Holm-adjusted p < alpha.
  combine          a claim's verdict from its claim parts only: refuted if any is; else effect
                   absent at this scale if any is; else out of regime if any is; equivalent if every
                   one is an equivalence that holds; reproduced if every one holds; else inconclusive.
                   Parts not run are left out; a claim with no claim part run is "not run".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..stats import least_squares_slope, mean_interval, paired_variance_ratio, tost_equivalent

REPRODUCED, REFUTED, EQUIVALENT, INCONCLUSIVE, NOT_RUN = (
    "reproduced",
    "refuted",
    "equivalent",
    "inconclusive",
    "not run",
)
OUT_OF_REGIME = "out of regime"
ABSENT = "effect absent at this scale"
PASSED, FAILED, UNDECIDED = (
    "manipulation check: passed",
    "manipulation check: failed",
    "manipulation check: inconclusive",
)
MEASURED = "measured"
DECIDED = (REPRODUCED, EQUIVALENT, REFUTED, ABSENT)  # what Holm may turn into inconclusive

# claims.json (DVC metrics: numbers only): each verdict as a number. > 0 supports the claim,
# < 0 speaks against it (or says it could not be tested in regime), 0 undecided.
VERDICT_CODES = {
    REPRODUCED: 1,
    EQUIVALENT: 2,
    PASSED: 1,
    INCONCLUSIVE: 0,
    UNDECIDED: 0,
    REFUTED: -1,
    FAILED: -1,
    ABSENT: -2,
    OUT_OF_REGIME: -3,
}


@dataclass(frozen=True)
class PartResult:
    verdict: str
    n: int  # seeds (pairs)
    estimate: float | None  # mean difference, mean slope, or variance ratio
    low: float | None  # the reported interval (at `level`)
    high: float | None
    level: float
    rule: str  # the rule that decided, with its numbers
    test_low: float | None = None  # the interval a one-sided rule used (1 - 2 alpha), when it differs
    test_high: float | None = None
    test_level: float | None = None
    per_seed: list[float] = field(default_factory=list)  # the paired differences (or slopes)
    p: float | None = None  # the p-value of the test behind the verdict (decides at p < alpha)
    threshold: float | None = None  # variance_ratio: the published ratio's floor


# ---------------------------------------------------------------- p-values
def _t_cdf(x: float, df: int) -> float:
    from scipy.stats import t

    return float(t.cdf(x, df))


def _t_sf(x: float, df: int) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


def _standardised(values: list[float], at: float) -> tuple[float, int] | None:
    """(mean - at) / (s / sqrt n) and its degrees of freedom; None with fewer than two values.
    A zero spread gives +-inf (or 0 when the mean is exactly `at`)."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if sd == 0:
        return (0.0 if mean == at else math.copysign(math.inf, mean - at)), n - 1
    return (mean - at) / (sd / math.sqrt(n)), n - 1


def p_two_sided(values: list[float], at: float = 0.0) -> float | None:
    """The one-sample t-test of mean = at, two-sided (paired when values are differences)."""
    z = _standardised(values, at)
    return None if z is None else min(1.0, 2 * _t_sf(abs(z[0]), z[1]))


def p_below(values: list[float], at: float) -> float | None:
    """One-sided p of H0: mean >= at (small when the mean is credibly below `at`)."""
    z = _standardised(values, at)
    return None if z is None else _t_cdf(z[0], z[1])


def p_above(values: list[float], at: float) -> float | None:
    """One-sided p of H0: mean <= at (small when the mean is credibly above `at`)."""
    z = _standardised(values, at)
    return None if z is None else _t_sf(z[0], z[1])


def pitman_morgan_p(a: list[float], b: list[float], ratio: float = 1.0) -> float | None:
    """Two-sided p of H0: var(a) / var(b) = ratio for paired samples: a and sqrt(ratio) b have equal
    variances exactly when u = a + sqrt(ratio) b and v = a - sqrt(ratio) b are uncorrelated, so the
    t-test of their correlation (n - 2 degrees of freedom). Its acceptance region is the Pitman-Morgan
    interval (stats.paired_variance_ratio)."""
    n = len(a)
    if n < 3 or len(b) != n:
        return None
    c = math.sqrt(ratio)
    u = [x + c * y for x, y in zip(a, b)]
    v = [x - c * y for x, y in zip(a, b)]
    if statistics.pstdev(u) == 0 or statistics.pstdev(v) == 0:
        return None
    r = statistics.correlation(u, v)
    if abs(r) >= 1:
        return 0.0
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return min(1.0, 2 * _t_sf(abs(t), n - 2))


# ---------------------------------------------------------------- the rules
def side_of(low: float | None, high: float | None, reference: float = 0.0) -> str | None:
    """Which side of `reference` an interval lies on entirely: lower, higher, or None (it straddles)."""
    if low is None or high is None:
        return None
    if high < reference:
        return "lower"
    if low > reference:
        return "higher"
    return None


def _directional(side: str | None, claimed: str) -> str:
    if side is None:
        return INCONCLUSIVE
    return REPRODUCED if side == claimed else REFUTED


def difference(a: list[float], b: list[float], direction: str, level: float = 0.95) -> PartResult:
    """Claimed: mean(a - b) < 0 (direction lower) or > 0 (higher)."""
    diffs = paired_differences(a, b)
    return _interval_rule(diffs, direction, level, "the {level:.0%} interval of the mean paired difference")


def trend(x: list[float], values: list[list[float]], direction: str, level: float = 0.95) -> PartResult:
    """values[c][s]: cell c (at x[c]) and seed s. Claimed: the slope against log2(x) is < 0 (lower) or > 0."""
    if len(x) != len(values) or any(v <= 0 for v in x):
        raise ValueError("a trend needs one positive x per cell")
    n_seeds = len(values[0])
    if any(len(v) != n_seeds for v in values):
        raise ValueError("every cell of a trend needs the same seeds")
    log_x = [math.log2(v) for v in x]
    slopes = [least_squares_slope(log_x, [cell[s] for cell in values]) for s in range(n_seeds)]
    return _interval_rule(
        slopes, direction, level, "the {level:.0%} interval of the mean per-seed slope (per doubling)"
    )


def _interval_rule(values: list[float], direction: str, level: float, what: str) -> PartResult:
    iv = mean_interval(values, level)
    verdict = _directional(side_of(iv.low, iv.high), direction) if direction else INCONCLUSIVE
    rule = f"{what.format(level=level)} excludes 0 on the {direction} side: reproduced; on the other: refuted"
    return PartResult(verdict, iv.n, iv.mean, iv.low, iv.high, level, rule, per_seed=values, p=p_two_sided(values))


def equivalence(a: list[float], b: list[float], margin: float, alpha: float = 0.05, level: float = 0.95) -> PartResult:
    """Claimed: |mean(a - b)| < margin (TOST at alpha)."""
    diffs = paired_differences(a, b)
    reported, tested = mean_interval(diffs, level), mean_interval(diffs, 1 - 2 * alpha)
    p_low, p_high = p_above(diffs, -margin), p_below(diffs, margin)  # H0: d <= -margin; H0: d >= margin
    p = None if p_low is None else max(p_low, p_high)
    if tost_equivalent(diffs, margin, alpha):
        verdict = EQUIVALENT
    elif side_of(tested.low, tested.high, margin) == "higher":
        verdict, p = REFUTED, p_above(diffs, margin)
    elif side_of(tested.low, tested.high, -margin) == "lower":
        verdict, p = REFUTED, p_below(diffs, -margin)
    else:
        verdict = INCONCLUSIVE
    rule = (
        f"TOST at alpha {alpha}: the {1 - 2 * alpha:.0%} interval inside (-{margin:g}, {margin:g}): "
        "equivalent; entirely outside: refuted"
    )
    return _two_intervals(verdict, diffs, reported, tested, level, rule, p)


def non_inferiority(
    a: list[float], b: list[float], margin: float, direction: str, alpha: float = 0.05, level: float = 0.95
) -> PartResult:
    """Claimed: a is not worse than b by more than margin; direction says which way is better
    (lower: a - b < margin; higher: a - b > -margin)."""
    diffs = paired_differences(a, b)
    reported, tested = mean_interval(diffs, level), mean_interval(diffs, 1 - 2 * alpha)
    bound = margin if direction == "lower" else -margin
    side = side_of(tested.low, tested.high, bound)
    verdict = INCONCLUSIVE if side is None else (REPRODUCED if side == direction else REFUTED)
    holds = p_below(diffs, bound) if direction == "lower" else p_above(diffs, bound)
    fails = p_above(diffs, bound) if direction == "lower" else p_below(diffs, bound)
    if verdict == REFUTED:
        p = fails
    elif verdict == REPRODUCED or holds is None:
        p = holds
    else:  # inconclusive: the nearer of the two (>= alpha either way)
        p = min(holds, fails)
    worse = ">" if direction == "lower" else "<"
    rule = (
        f"one-sided test at alpha {alpha}: the {1 - 2 * alpha:.0%} interval entirely on the better side of "
        f"{bound:+g}: reproduced; entirely {worse} {bound:+g}: refuted"
    )
    return _two_intervals(verdict, diffs, reported, tested, level, rule, p)


def _two_intervals(verdict, diffs, reported, tested, level, rule, p) -> PartResult:
    return PartResult(
        verdict,
        reported.n,
        reported.mean,
        reported.low,
        reported.high,
        level,
        rule,
        tested.low,
        tested.high,
        tested.level,
        per_seed=diffs,
        p=p,
    )


def published_ratio_floor(std_a: float, std_b: float, n_a: int, n_b: int, rounding: float = 0.0, level=0.95) -> float:
    """The smallest variance ratio var(a) / var(b) a publication's printed spreads are consistent
    with: the stds as printed, each moved by its rounding towards the other ((std_a - r) / (std_b + r)),
    squared, divided by the F quantile of its own sampling error (the lower end of the `level`
    F interval of two independent samples of n_a and n_b runs)."""
    from scipy.stats import f

    ratio = ((std_a - rounding) / (std_b + rounding)) ** 2
    return ratio / float(f.ppf((1 + level) / 2, n_a - 1, n_b - 1))


def variance_ratio(
    a: list[float], b: list[float], direction: str, level: float = 0.95, absent_below: float | None = None
) -> PartResult:
    """Claimed: var(a) > var(b) (direction higher) or < (lower), across paired seeds. absent_below:
    the published ratio's floor; an interval that excludes it says the effect is absent at this scale."""
    ratio = paired_variance_ratio(a, b, level)
    side = side_of(ratio.low, ratio.high, 1.0)
    verdict = _directional(side, direction)
    p = pitman_morgan_p(a, b, 1.0)
    if verdict == INCONCLUSIVE and absent_below is not None and ratio.low is not None:
        beyond = ratio.high < absent_below if direction == "higher" else ratio.low > absent_below
        if beyond:
            verdict, p = ABSENT, pitman_morgan_p(a, b, absent_below)
    rule = (
        f"the {level:.0%} Pitman-Morgan interval of var(a) / var(b) entirely on the {direction} side of 1: "
        "reproduced; on the other: refuted"
    )
    if absent_below is not None:
        rule += f"; excluding the published ratio's floor {absent_below:.3g}: effect absent at this scale"
    return PartResult(verdict, ratio.n, ratio.ratio, ratio.low, ratio.high, level, rule, p=p, threshold=absent_below)


def paired_differences(a: list[float], b: list[float]) -> list[float]:
    """a_i - b_i of each seed (index i of both is the same seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return [x - y for x, y in zip(a, b)]


# ---------------------------------------------------------------- regime, roles, Holm, combine
def regime_failures(upper_bounds: dict[str, float | None], bar: float) -> list[str]:
    """The cells whose upper bound of mean test loss is not below the bar (None: no interval, e.g. one
    finished seed, cannot show it)."""
    return [cell for cell, high in upper_bounds.items() if high is None or not high < bar]


def for_role(verdict: str, role: str) -> str:
    """A rule's verdict as its part's role reads it."""
    if role == "measurement":
        return MEASURED if verdict != NOT_RUN else NOT_RUN
    if role == "manipulation":
        return {REPRODUCED: PASSED, EQUIVALENT: PASSED, REFUTED: FAILED, INCONCLUSIVE: UNDECIDED}.get(verdict, verdict)
    return verdict


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made
    non-decreasing in that order and capped at 1; returned in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def label(part: dict) -> str:
    """A judged part's verdict as a reader should see it: one that Holm's adjustment made inconclusive says
    what its own rule reached and both p-values (else an interval excluding 0 reads as a contradiction)."""
    before = part.get("verdict_before_holm")
    if before is None:
        return part["verdict"]
    return f"{part['verdict']} ({before} before Holm: p {part['p']:.3g}, Holm p {part['p_holm']:.3g})"


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its claim parts' (see the module doc)."""
    run = [v for v in verdicts if v != NOT_RUN]
    if not run:
        return NOT_RUN
    for decisive in (REFUTED, ABSENT, OUT_OF_REGIME):
        if decisive in run:
            return decisive
    if all(v == EQUIVALENT for v in run):
        return EQUIVALENT
    if all(v in (REPRODUCED, EQUIVALENT) for v in run):
        return REPRODUCED
    return INCONCLUSIVE


def manipulation_summary(verdicts: list[str]) -> str | None:
    """The manipulation checks of a claim together: failed if any failed, passed if all passed, None if none ran."""
    run = [v for v in verdicts if v != NOT_RUN]
    if not run:
        return None
    if FAILED in run:
        return FAILED
    return PASSED if all(v == PASSED for v in run) else UNDECIDED
