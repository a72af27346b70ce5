"""Statistics the report and the claims study share: exact Student-t intervals, paired differences,
and two one-sided tests (TOST) for equivalence. scipy supplies the t quantiles (no hand table)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (exact, every df)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float  # sample standard deviation (n - 1)
    n: int
    half_width: float | None  # None when n < 2: no interval
    level: float

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.half_width is not None and (self.low > 0 or self.high < 0)


def mean_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean and its two-sided Student-t confidence interval: mean +- t_{(1+level)/2, n-1} * s / sqrt(n)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, 0.0, n, None, level)
    std = statistics.stdev(values)
    return Interval(mean, std, n, t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n), level)


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """Interval of the mean of a_i - b_i over pairs (e.g. the same seed): paired, so the seed-to-seed
    variation both share cancels."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)], level)


def tost_equivalent(differences: list[float], margin: float, alpha: float = 0.05) -> bool:
    """Two one-sided t-tests at level alpha: the mean difference is inside (-margin, +margin).
    Equivalent to the (1 - 2 alpha) interval lying inside the margins."""
    if margin <= 0:
        raise ValueError("the equivalence margin must be > 0")
    interval = mean_interval(differences, level=1 - 2 * alpha)
    return interval.half_width is not None and -margin < interval.low and interval.high < margin
