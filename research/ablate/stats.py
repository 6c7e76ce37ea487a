"""Statistics of an ablation over seeds: Student-t confidence intervals for a variant's mean and for
its paired difference from the reference variant, by `scipy.stats`, and what a design can resolve.

Seed `s` of every variant starts from the same initialization key and sees the data in the same
order, so the variants' results pair by seed: the difference `variant[s] - reference[s]` cancels
what the seed alone decides, and its interval is narrower than the two means' intervals suggest.
A difference is *resolved* when its interval excludes 0.

All values are fractions (accuracy 0.9312, not 93.12); intervals are two-sided at `LEVEL`.

**Bounds.** A mean accuracy lies in [0, 1] and a difference of two in [-1, 1], but a t interval
from few seeds can reach past them (two seeds 0.9667 and 0.9806 give [0.885, 1.062]). `low` and
`high` are the t interval clipped to those bounds (`ACCURACY`, `DIFFERENCE`). Clipping removes only
values the true mean cannot take, so the clipped interval holds the true mean whenever the t
interval does: its coverage is the t interval's. `half` stays the t interval's half-width (the
spread of the estimate), so near a bound the interval is `[low, high]`, not `mean +- half`. An
interval for proportions (Wilson's, Clopper-Pearson's) would answer another question: how much the
test set's images move one run's accuracy, not how much the seed moves it.

What SciPy lacks is kept here: `resolvable`, the difference a paired design can resolve.
"""

import dataclasses
import math
import statistics
import warnings

from scipy import stats as scipy_stats

LEVEL = 0.95  # Two-sided confidence level of every interval.
ACCURACY = (0.0, 1.0)  # The values a mean accuracy can take.
DIFFERENCE = (-1.0, 1.0)  # The values a difference of two accuracies can take.


@dataclasses.dataclass(frozen=True)
class Interval:
  """The mean of `values` and its confidence interval `[low, high]`.

  `std` is the sample standard deviation (n - 1), `half` the t interval's half-width before
  clipping. With one value the spread is unknown: `std`, `half`, `low` and `high` are None.
  """

  mean: float
  std: float | None
  half: float | None
  low: float | None
  high: float | None
  n: int
  values: list[float]


@dataclasses.dataclass(frozen=True)
class Paired(Interval):
  """The interval of `values - reference` seed by seed, and whether it excludes 0 (`resolved`;
  None with one seed)."""

  resolved: bool | None = None


@dataclasses.dataclass(frozen=True)
class Resolution:
  """What a paired design can resolve: `half`, the half-width of its intervals (an observed
  difference smaller than this is not resolved), and `detectable`, the true difference it resolves
  with probability `power`. None with one seed."""

  half: float | None
  detectable: float | None
  power: float


def _t_interval(test, *args, level: float) -> tuple[float, float]:
  """The confidence interval at `level` of the SciPy t-test `test(*args)`, as floats."""
  # Values equal to float precision (every seed alike) make SciPy warn that the moment is imprecise;
  # the interval it gives is still right: the mean, with no width.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Precision loss occurred in moment", RuntimeWarning)
    found = test(*args).confidence_interval(level)
  return float(found.low), float(found.high)


def _bounded(values: list[float], low: float, high: float, bounds: tuple[float, float]) -> dict:
  """The fields of an `Interval` of `values` from the t interval `[low, high]`, clipped."""
  return {
    "mean": statistics.fmean(values),
    "std": statistics.stdev(values),
    "half": (high - low) / 2,
    "low": max(low, bounds[0]),
    "high": min(high, bounds[1]),
    "n": len(values),
    "values": list(values),
  }


def interval(
  values: list[float], level: float = LEVEL, bounds: tuple[float, float] = ACCURACY
) -> Interval:
  """The mean of `values` and its Student-t interval (`scipy.stats.ttest_1samp`), clipped to
  `bounds`."""
  if not values:
    raise ValueError("an interval needs at least one value")
  if len(values) == 1:
    return Interval(values[0], None, None, None, None, 1, list(values))
  low, high = _t_interval(scipy_stats.ttest_1samp, values, 0.0, level=level)
  return Interval(**_bounded(values, low, high, bounds))


def paired(
  values: list[float],
  reference: list[float],
  level: float = LEVEL,
  bounds: tuple[float, float] = DIFFERENCE,
) -> Paired:
  """`values - reference`, seed by seed (the lists in the same seed order): the paired t interval
  (`scipy.stats.ttest_rel`) clipped to `bounds`, and whether it excludes 0."""
  if len(values) != len(reference):
    raise ValueError(f"paired values need one per seed on both sides: {len(values)} and "
                     f"{len(reference)}")  # fmt: skip
  differences = [v - r for v, r in zip(values, reference)]
  if len(values) == 1:
    return Paired(differences[0], None, None, None, None, 1, differences, None)
  low, high = _t_interval(scipy_stats.ttest_rel, values, reference, level=level)
  return Paired(**_bounded(differences, low, high, bounds), resolved=low > 0 or high < 0)


def resolvable(std: float | None, n: int, level: float = LEVEL, power: float = 0.8) -> Resolution:
  """What a paired design of `n` seeds can resolve, given the spread `std` of the paired
  differences: the half-width `t_((1+level)/2) * std / sqrt(n)`, and the usual approximation of
  the difference detected with probability `power`, `(t_((1+level)/2) + t_power) * std / sqrt(n)`
  (Student t with n - 1 degrees of freedom)."""
  if std is None or n < 2:
    return Resolution(None, None, power)
  scale = std / math.sqrt(n)
  t_level = float(scipy_stats.t.ppf((1 + level) / 2, n - 1))
  t_power = float(scipy_stats.t.ppf(power, n - 1))
  return Resolution(half=t_level * scale, detectable=(t_level + t_power) * scale, power=power)
