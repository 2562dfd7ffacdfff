"""Seed statistics by hand: the t interval of paired differences and the verdict it gives."""

from __future__ import annotations

import math

import pytest

from align.eval.seeds import interval95, mean_std, verdict


def test_interval_is_the_t_interval_of_the_mean():
    d = [-3.0, -5.0, -4.0]  # mean -4, std 1, n 3: half-width 4.303 / sqrt(3)
    low, high = interval95(d)
    assert low == pytest.approx(-4 - 4.303 / math.sqrt(3)) and high == pytest.approx(-4 + 4.303 / math.sqrt(3))
    assert verdict(d) == "lower"
    assert verdict([2.0, 3.0, 4.0]) == "higher" and verdict([1.0, 2.0, 3.0]) == "not told apart"
    assert verdict([-3.0, 1.0, -1.0]) == "not told apart"
    assert verdict([-3.0]) == "one seed" and interval95([-3.0]) is None


def test_mean_std_of_one_value_has_no_spread():
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
