"""moelab.stats against hand computations and scipy's own t distribution."""

import math

import pytest

from moelab.stats import mean_interval, paired_difference, t_quantile, tost_equivalent


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
