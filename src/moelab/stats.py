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


@dataclass(frozen=True)
class RatioInterval:
    ratio: float  # s_a^2 / s_b^2
    n: int
    low: float | None  # None when n < 3 or a variance is 0: no interval
    high: float | None
    level: float


def paired_variance_ratio(a: list[float], b: list[float], level: float = 0.95) -> RatioInterval:
    """Ratio of the variances of two paired samples (e.g. two settings run with the same seeds) and
    its Pitman-Morgan interval, which, unlike the F interval, allows the pairs to be correlated.

    For a hypothesised ratio L, a and sqrt(L) b have equal variances exactly when a + sqrt(L) b and
    a - sqrt(L) b are uncorrelated; the interval is every L that this correlation's t-test (n - 2
    degrees of freedom) does not reject: F (K -+ sqrt(K^2 - 1)) with F = s_a^2 / s_b^2,
    K = 1 + 2 (1 - r^2) t^2 / (n - 2), r the correlation of a and b, t = t_{(1+level)/2, n-2}."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    var_a = statistics.variance(a) if n > 1 else 0.0
    var_b = statistics.variance(b) if n > 1 else 0.0
    ratio = var_a / var_b if var_b > 0 else math.inf
    if n < 3 or var_a == 0 or var_b == 0:
        return RatioInterval(ratio, n, None, None, level)
    r = statistics.correlation(a, b)
    t = t_quantile((1 + level) / 2, n - 2)
    k = 1 + 2 * (1 - r * r) * t * t / (n - 2)
    spread = math.sqrt(k * k - 1)
    return RatioInterval(ratio, n, ratio * (k - spread), ratio * (k + spread), level)


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """Slope of the ordinary least-squares line through (xs, ys)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a slope needs >= 2 points with an x and a y each, got {len(xs)} and {len(ys)}")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a slope needs at least two distinct x values")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
