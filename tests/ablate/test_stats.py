"""Ablation statistics against references the code does not use: Student-t intervals by the textbook
formula with quantiles from a printed t table, paired differences, bounds, resolution."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from research.ablate import stats

ACC = [0.9312, 0.9335, 0.9301, 0.9340, 0.9322]  # Five seeds of a variant,
REF = [0.9330, 0.9341, 0.9325, 0.9347, 0.9338]  # and of the reference, seed by seed.
# Two-sided 95% quantiles of Student t from a printed table, by degrees of freedom.
T_975 = {1: 12.706, 4: 2.776}


def by_hand(values: list[float], df: int) -> tuple[float, float, float]:
  """(mean, low, high) of the 95% t interval: mean +- t * s / sqrt(n), s the sample deviation."""
  mean = sum(values) / len(values)
  s = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  half = T_975[df] * s / math.sqrt(len(values))
  return mean, mean - half, mean + half


def test_the_interval_is_the_student_t_interval():
  got = stats.interval(ACC)
  mean, low, high = by_hand(ACC, df=4)
  assert got.mean == pytest.approx(mean, rel=1e-12)
  assert (got.low, got.high) == pytest.approx((low, high), rel=1e-4)  # The table's 4 digits.
  assert got.half == pytest.approx((high - low) / 2, rel=1e-3)
  # And exactly SciPy's by another route: its t distribution's interval around the mean.
  exact = scipy_stats.t.interval(0.95, 4, loc=np.mean(ACC), scale=scipy_stats.sem(ACC))
  assert (got.low, got.high) == pytest.approx(exact, rel=1e-12)
  assert got.std == pytest.approx(statistics.stdev(ACC), rel=1e-12)
  assert got.n == 5 and got.values == ACC


def test_the_paired_difference_is_the_interval_of_the_differences():
  got = stats.paired(ACC, REF)
  d = [a - r for a, r in zip(ACC, REF)]
  mean, low, high = by_hand(d, df=4)
  assert got.mean == pytest.approx(mean, abs=1e-15) and got.values == pytest.approx(d)
  assert (got.low, got.high) == pytest.approx((low, high), rel=1e-3)
  # The interval excludes 0 exactly when the paired t-test rejects at 5%.
  assert got.resolved is True and scipy_stats.ttest_rel(ACC, REF).pvalue < 0.05
  # Unpaired, the same numbers do not resolve: pairing is what narrows the interval.
  assert stats.interval(ACC).half + stats.interval(REF).half > abs(mean)


def test_an_unresolved_difference_and_a_single_seed():
  noisy = [0.93, 0.95, 0.92, 0.96, 0.94]
  got = stats.paired(noisy, REF)
  assert got.resolved is False and got.low < 0 < got.high
  assert scipy_stats.ttest_rel(noisy, REF).pvalue >= 0.05
  one = stats.paired([0.93], [0.92])
  assert one.mean == pytest.approx(0.01) and one.half is None and one.resolved is None
  assert stats.interval([0.93]).low is None
  with pytest.raises(ValueError):
    stats.paired(ACC, REF[:3])


def test_seeds_alike_give_an_interval_of_no_width_without_a_warning(recwarn):
  got = stats.paired([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
  assert (got.mean, got.half, got.low, got.high, got.resolved) == (0, 0, 0, 0, False)
  same = stats.interval([0.9, 0.9])
  assert (same.low, same.high) == pytest.approx((0.9, 0.9))
  assert not recwarn.list


def test_an_accuracy_interval_never_leaves_0_to_1():
  """Two seeds near 100%: the t interval reaches past 1 (mean 0.97365 +- 12.706 * 0.00695); the
  interval reported stops at 1, its low end and half-width unchanged. Near 0 alike."""
  values = [0.9667, 0.9806]
  mean, low, high = by_hand(values, df=1)
  assert high > 1  # What the bound is for.
  got = stats.interval(values)
  assert got.high == 1.0 and got.low == pytest.approx(low, rel=1e-4)
  assert got.half == pytest.approx(high - mean, rel=1e-4) and got.mean == pytest.approx(mean)
  near_zero = stats.interval([0.01, 0.05])
  assert near_zero.low == 0.0 and near_zero.high == pytest.approx(by_hand([0.01, 0.05], 1)[2], 1e-4)
  inside = stats.interval(ACC)  # Far from the bounds nothing is clipped.
  assert inside.low == pytest.approx(inside.mean - inside.half)


def test_a_difference_interval_never_leaves_minus_1_to_1():
  got = stats.paired([0.99, 0.2], [0.09, 0.15])  # Differences 0.9 and 0.05.
  mean, low, high = by_hand([0.9, 0.05], df=1)
  assert low < -1 and high > 1
  assert (got.low, got.high) == (-1.0, 1.0) and got.resolved is False
  assert got.half == pytest.approx((high - low) / 2, rel=1e-4)


def test_what_the_design_can_resolve():
  std, n = 0.002, 5
  got = stats.resolvable(std, n)
  assert got.half == pytest.approx(T_975[4] * std / math.sqrt(5), rel=1e-3)  # 4 digits.
  # 80% power: (t_0.975 + t_0.80) standard errors, by hand from the t table: 2.776 + 0.941.
  assert got.detectable == pytest.approx((2.776 + 0.941) * std / math.sqrt(5), rel=1e-3)
  assert got.power == 0.8
  assert stats.resolvable(None, 1).half is None
