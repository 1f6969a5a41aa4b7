"""t-intervals, p-value resolution and the smallest detectable difference, by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from analysis.stability_stats import (
    minimum_detectable_difference,
    p_value_text,
    pooled_std,
    t_interval,
    t_test_power,
    welch_interval,
)


def test_t_interval_by_hand() -> None:
    # mean 2.5, s = sqrt(5/3) = 1.290994, t_{0.975,3} = 3.182446: half-width 2.054260
    low, high = t_interval([1.0, 2.0, 3.0, 4.0, None])
    assert low == pytest.approx(2.5 - 2.054260, abs=1e-6)
    assert high == pytest.approx(2.5 + 2.054260, abs=1e-6)
    assert t_interval([1.0]) == (None, None)


def test_welch_interval_by_hand() -> None:
    # a: mean 2.5, s² 5/3, n 4; b: mean 4, s² 4, n 3 -> se² = 5/12 + 4/3 = 1.75
    # ν = 1.75² / ((5/12)²/3 + (4/3)²/2) = 3.0625 / 0.9467593 = 3.234719
    low, high = welch_interval([1, 2, 3, 4], [2, 4, 6])
    half = (high - low) / 2
    assert (low + high) / 2 == pytest.approx(-1.5)
    assert half == pytest.approx(stats.t.ppf(0.975, 3.234719) * math.sqrt(1.75), rel=1e-6)
    assert 3.0 < half / math.sqrt(1.75) < 3.1824  # between t_{0.975,∞..3}, nearer df 3
    assert welch_interval([1.0], [1.0, 2.0]) == (None, None)


def test_p_value_at_the_resolution_of_the_permutation_test() -> None:
    assert p_value_text(1 / 10001, 10000) == "< 1/10000"
    assert p_value_text(2 / 10001, 10000) == "0.0002"
    assert p_value_text(0.0456, 10000) == "0.046"
    assert p_value_text(None, 10000) == ""


def test_minimum_detectable_difference_matches_the_t_test_tables() -> None:
    # two-sided two-sample t-test, alpha 0.05, power 0.8: n = 10 per group needs d = 1.3249
    # (Cohen's tables / G*Power); n = 64 per group needs d just below 0.5
    assert minimum_detectable_difference(10, 10, 1.0) == pytest.approx(1.3249, abs=2e-4)
    assert minimum_detectable_difference(64, 64, 1.0) == pytest.approx(0.4991, abs=2e-4)
    # the normal approximation (z_0.975 + z_0.8) sqrt(2/n) is slightly smaller
    normal = (1.959964 + 0.841621) * math.sqrt(2 / 64)
    assert normal < minimum_detectable_difference(64, 64, 1.0) < normal * 1.01
    # 10 per model with a spread of ~350 meV/atom: 464 meV/atom, and 68 meV/atom has < 10 % power
    assert minimum_detectable_difference(10, 10, 350.0) == pytest.approx(463.7, abs=0.2)
    assert 0.05 < t_test_power(68.0, 10, 10, 350.0) < 0.10
    assert t_test_power(463.73, 10, 10, 350.0) == pytest.approx(0.8, abs=1e-3)
    assert minimum_detectable_difference(1, 10, 1.0) is None
    assert minimum_detectable_difference(10, 10, 0.0) is None


def test_pooled_std_by_hand() -> None:
    # ((4-1) 5/3 + (3-1) 4) / 5 = 13/5
    assert pooled_std([1, 2, 3, 4], [2, 4, 6]) == pytest.approx(math.sqrt(13 / 5))
