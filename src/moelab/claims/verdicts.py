"""The verdict rules, fixed before any run (claims/params.yaml repeats them in words).

Every input is per-seed values aligned by seed (index i of `a` and `b` is the same seed), so each
test is paired: the seed-to-seed variation the cells share cancels.

  difference       reproduced: the `level` interval of mean(a - b) excludes 0 on the claimed side;
                   refuted: it excludes 0 on the other side; otherwise inconclusive.
  equivalence      TOST at alpha: equivalent when the (1 - 2 alpha) interval lies inside
                   (-margin, +margin); refuted when it lies entirely outside; otherwise inconclusive.
  non_inferiority  a is not worse than b by more than margin (direction: which way is better):
                   with lower better, reproduced when the (1 - 2 alpha) interval's upper end is
                   < margin, refuted when its lower end is > margin; otherwise inconclusive.
  trend            per seed, the least-squares slope of the values against log2(x); then the
                   difference rule on the slopes.
  variance_ratio   var(a) / var(b) with the Pitman-Morgan `level` interval: reproduced when it lies
                   on the claimed side of 1, refuted when on the other; otherwise inconclusive.
  combine          refuted if any part is; reproduced (equivalent when every part is an
                   equivalence) if every part is; parts not run are left out; otherwise inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..stats import least_squares_slope, mean_interval, paired_variance_ratio, tost_equivalent

REPRODUCED, REFUTED, EQUIVALENT, INCONCLUSIVE, NOT_RUN = (
    "reproduced",
    "refuted",
    "equivalent",
    "inconclusive",
    "not run",
)


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
    verdict = _directional(side_of(iv.low, iv.high), direction)
    rule = f"{what.format(level=level)} excludes 0 on the {direction} side: reproduced; on the other: refuted"
    return PartResult(verdict, iv.n, iv.mean, iv.low, iv.high, level, rule, per_seed=values)


def equivalence(a: list[float], b: list[float], margin: float, alpha: float = 0.05, level: float = 0.95) -> PartResult:
    """Claimed: |mean(a - b)| < margin (TOST at alpha)."""
    diffs = paired_differences(a, b)
    reported, tested = mean_interval(diffs, level), mean_interval(diffs, 1 - 2 * alpha)
    if tost_equivalent(diffs, margin, alpha):
        verdict = EQUIVALENT
    elif side_of(tested.low, tested.high, margin) == "higher" or side_of(tested.low, tested.high, -margin) == "lower":
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    rule = (
        f"TOST at alpha {alpha}: the {1 - 2 * alpha:.0%} interval inside (-{margin:g}, {margin:g}): "
        "equivalent; entirely outside: refuted"
    )
    return _two_intervals(verdict, diffs, reported, tested, level, rule)


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
    worse = ">" if direction == "lower" else "<"
    rule = (
        f"one-sided test at alpha {alpha}: the {1 - 2 * alpha:.0%} interval entirely on the better side of "
        f"{bound:+g}: reproduced; entirely {worse} {bound:+g}: refuted"
    )
    return _two_intervals(verdict, diffs, reported, tested, level, rule)


def _two_intervals(verdict, diffs, reported, tested, level, rule) -> PartResult:
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
    )


def variance_ratio(a: list[float], b: list[float], direction: str, level: float = 0.95) -> PartResult:
    """Claimed: var(a) > var(b) (direction higher) or < (lower), across paired seeds."""
    ratio = paired_variance_ratio(a, b, level)
    verdict = _directional(side_of(ratio.low, ratio.high, 1.0), direction)
    rule = (
        f"the {level:.0%} Pitman-Morgan interval of var(a) / var(b) entirely on the {direction} side of 1: "
        "reproduced; on the other: refuted"
    )
    return PartResult(verdict, ratio.n, ratio.ratio, ratio.low, ratio.high, level, rule)


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts' (see the module doc)."""
    run = [v for v in verdicts if v != NOT_RUN]
    if not run:
        return NOT_RUN
    if REFUTED in run:
        return REFUTED
    if all(v == EQUIVALENT for v in run):
        return EQUIVALENT
    if all(v in (REPRODUCED, EQUIVALENT) for v in run):
        return REPRODUCED
    return INCONCLUSIVE


def paired_differences(a: list[float], b: list[float]) -> list[float]:
    """a_i - b_i of each seed (index i of both is the same seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return [x - y for x, y in zip(a, b)]
