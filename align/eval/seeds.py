"""Reading figures over seeds: mean ± std, and whether a paired change is told apart from zero.

A training figure moves from machine to machine and from seed to seed, so the project states that a method lowers
a metric only where the 95% interval of its per-seed change excludes zero (Student's t on the paired differences,
one per seed: each seed's method and baseline share the world, the base policy and the data).
"""

from __future__ import annotations

import math
import statistics

# two-sided 95% critical values of Student's t for 1..10 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def interval95(differences: list[float]) -> tuple[float, float] | None:
    """The 95% interval of the mean of per-seed differences, or None with fewer than 2 seeds (or over 11)."""
    n = len(differences)
    if not 2 <= n <= len(T_975) + 1:
        return None
    mean, std = mean_std(differences)
    half = T_975[n - 2] * std / math.sqrt(n)
    return mean - half, mean + half


def verdict(differences: list[float]) -> str:
    """'lower' / 'higher' where the 95% interval excludes zero, else 'not told apart' (or 'one seed')."""
    ci = interval95(differences)
    if ci is None:
        return "one seed" if len(differences) < 2 else "not computed"
    if ci[1] < 0:
        return "lower"
    if ci[0] > 0:
        return "higher"
    return "not told apart"
