"""moelab.stats (and the paired gap of scripts/classification_vs_bow.py) against hand computations and scipy's t."""

import math
import statistics

import pytest

from moelab.stats import (
    least_squares_slope,
    mean_interval,
    paired_difference,
    paired_variance_ratio,
    t_quantile,
    tost_equivalent,
)
from scriptload import load_script


def test_t_quantile_matches_tables_and_large_df():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-6)  # printed tables: 4.303
    assert t_quantile(0.975, 40) == pytest.approx(2.021075, rel=1e-6)  # not 1.96 for df > 30
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959966, rel=1e-5)


def test_mean_interval_by_hand():
    iv = mean_interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.std, iv.n) == (2.0, 1.0, 3)
    assert iv.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean_interval([5.0]).half_width is None


def test_paired_difference_cancels_the_shared_seed_effect():
    a, b = [10.0, 20.0, 30.0], [9.0, 19.1, 28.9]  # differences 1.0, 0.9, 1.1
    iv = paired_difference(a, b)
    assert iv.mean == pytest.approx(1.0) and iv.std == pytest.approx(0.1)
    assert iv.excludes_zero()  # unpaired, the spread of 10 would hide it
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_tost_equivalence_by_hand():
    diffs = [0.1, -0.1, 0.0, 0.05, -0.05]  # mean 0, s = 0.0791, 90% half-width 0.0754
    assert tost_equivalent(diffs, margin=0.1)
    assert not tost_equivalent(diffs, margin=0.07)
    assert not tost_equivalent([0.5], margin=1.0)  # one pair: no interval, no claim


def test_paired_variance_ratio_endpoints_are_where_the_correlation_test_rejects():
    """Independent reference: at each end of the Pitman-Morgan interval, scipy's Pearson test of
    corr(a + sqrt(L) b, a - sqrt(L) b) = 0 has p-value exactly 1 - level."""
    from scipy.stats import pearsonr

    a = [5.1, 4.2, 6.3, 5.9, 3.8, 6.6, 4.9]
    b = [5.0, 4.6, 5.4, 5.3, 4.5, 5.6, 4.8]
    ratio = paired_variance_ratio(a, b)
    assert ratio.ratio == pytest.approx(statistics.variance(a) / statistics.variance(b))
    assert ratio.low < ratio.ratio < ratio.high
    for bound in (ratio.low, ratio.high):
        scaled = [math.sqrt(bound) * y for y in b]
        p = pearsonr([x + y for x, y in zip(a, scaled)], [x - y for x, y in zip(a, scaled)]).pvalue
        assert p == pytest.approx(0.05, abs=1e-9)
    assert paired_variance_ratio(a[:2], b[:2]).low is None  # n - 2 = 0 degrees of freedom
    assert paired_variance_ratio([1.0, 1.0, 1.0], [1.0, 2.0, 4.0]).low is None  # a variance of 0


def test_paired_variance_ratio_by_hand():
    # uncorrelated pairs (r = 0): K = 1 + 2 t^2 / (n - 2) with t = t_{0.975, 2} = 4.302653
    a, b = [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]
    k = 1 + 2 * 4.302653**2 / 2
    ratio = paired_variance_ratio(a, b)
    assert ratio.ratio == 1.0
    assert ratio.low == pytest.approx(k - math.sqrt(k * k - 1), rel=1e-6)
    assert ratio.high == pytest.approx(k + math.sqrt(k * k - 1), rel=1e-6)


def test_least_squares_slope_by_hand():
    assert least_squares_slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert least_squares_slope([0, 1, 2], [0.0, 2.0, 1.0]) == pytest.approx(0.5)  # sxy 1 / sxx 2
    with pytest.raises(ValueError):
        least_squares_slope([1, 1], [0.0, 1.0])


def test_paired_gap_to_the_bar_by_hand():
    """scripts/classification_vs_bow.py: seeds' accuracy averaged per example, minus the bar's, on the same
    examples; a constant per-example gap has a zero-width interval, and a large sample's percentile interval
    is the normal one (mean +- 1.96 sd / sqrt(n))."""
    import numpy as np

    paired_gap = load_script("classification_vs_bow").paired_gap
    model = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=float)  # per example 1, .5, .5, 1
    bar = np.array([1, 1, 0, 0], dtype=float)  # differences 0, -.5, .5, 1 -> mean .25
    row = paired_gap(model, bar, resamples=500)
    assert (row["model"], row["bar"], row["gap"], row["examples"]) == (0.75, 0.5, 0.25, 4)
    assert -0.5 <= row["low"] < 0.25 < row["high"] <= 1.0
    same = paired_gap(np.ones((3, 50)), np.zeros(50), resamples=200)
    assert same["low"] == same["high"] == same["gap"] == 1.0
    rng = np.random.default_rng(1)
    model, bar = (rng.random((3, 4000)) < 0.75).astype(float), (rng.random(4000) < 0.7).astype(float)
    row = paired_gap(model, bar, resamples=4000)
    diff = model.mean(0) - bar
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert row["low"] == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert row["high"] == pytest.approx(diff.mean() + half, abs=0.15 * half)
