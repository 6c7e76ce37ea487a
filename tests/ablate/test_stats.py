"""Ablation statistics against SciPy's own: Student-t intervals, paired differences, resolution."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from research.ablate import stats

ACC = [0.9312, 0.9335, 0.9301, 0.9340, 0.9322]  # Five seeds of a variant,
REF = [0.9330, 0.9341, 0.9325, 0.9347, 0.9338]  # and of the reference, seed by seed.


def test_the_interval_is_scipys_student_t_interval():
  got = stats.interval(ACC)
  low, high = scipy_stats.t.interval(
    0.95, len(ACC) - 1, loc=np.mean(ACC), scale=scipy_stats.sem(ACC)
  )
  assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-12)
  assert got["std"] == pytest.approx(np.std(ACC, ddof=1), rel=1e-12)
  assert got["n"] == 5 and got["values"] == ACC


def test_the_paired_difference_is_scipys_paired_t_test():
  got = stats.paired(ACC, REF)
  d = np.subtract(ACC, REF)
  low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
  assert got["mean"] == pytest.approx(d.mean(), abs=1e-15)
  assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-9)
  # The interval excludes 0 exactly when the paired t-test rejects at 5%.
  p = scipy_stats.ttest_rel(ACC, REF).pvalue
  assert got["resolved"] is True and p < 0.05
  # Unpaired, the same numbers do not resolve: pairing is what narrows the interval.
  assert stats.interval(ACC)["half"] + stats.interval(REF)["half"] > abs(d.mean())


def test_an_unresolved_difference_and_a_single_seed():
  noisy = [0.93, 0.95, 0.92, 0.96, 0.94]
  got = stats.paired(noisy, REF)
  assert got["resolved"] is False and scipy_stats.ttest_rel(noisy, REF).pvalue >= 0.05
  one = stats.paired([0.93], [0.92])
  assert one["mean"] == pytest.approx(0.01) and one["half"] is None and one["resolved"] is None
  with pytest.raises(ValueError):
    stats.paired(ACC, REF[:3])


def test_what_the_design_can_resolve():
  std, n = 0.002, 5
  got = stats.resolvable(std, n)
  assert got["half"] == pytest.approx(scipy_stats.t.ppf(0.975, 4) * std / math.sqrt(5))
  # 80% power: (t_0.975 + t_0.80) standard errors, by hand from the t table: 2.776 + 0.941.
  assert got["detectable"] == pytest.approx((2.776 + 0.941) * std / math.sqrt(5), rel=1e-3)
  assert stats.resolvable(None, 1)["half"] is None
