"""Statistics of an ablation over seeds: Student-t confidence intervals for a variant's mean and for
its paired difference from the reference variant.

Seed `s` of every variant starts from the same initialization key and sees the data in the same
order, so the variants' results pair by seed: the difference `variant[s] - reference[s]` cancels
what the seed alone decides, and its interval is narrower than the two means' intervals suggest.
A difference is *resolved* when its interval excludes 0.

All values are fractions (accuracy 0.9312, not 93.12); intervals are two-sided at `LEVEL`.
"""

import math
import statistics

from scipy import stats as scipy_stats

LEVEL = 0.95  # Two-sided confidence level of every interval.


def t_quantile(n: int, level: float = LEVEL) -> float:
  """Student t's two-sided critical value for `n` values (`n - 1` degrees of freedom)."""
  return float(scipy_stats.t.ppf((1 + level) / 2, n - 1))


def interval(values: list[float], level: float = LEVEL) -> dict:
  """The mean of `values` and its Student-t confidence interval:
  `{"mean", "std" (sample, n - 1), "half" (half-width), "low", "high", "n", "values"}`.
  With one value the spread is unknown: `std`, `half`, `low` and `high` are None."""
  n = len(values)
  if n == 0:
    raise ValueError("an interval needs at least one value")
  mean = statistics.fmean(values)
  if n == 1:
    return {"mean": mean, "std": None, "half": None, "low": None, "high": None, "n": 1,
            "values": list(values)}  # fmt: skip
  std = statistics.stdev(values)
  half = t_quantile(n, level) * std / math.sqrt(n)
  return {
    "mean": mean,
    "std": std,
    "half": half,
    "low": mean - half,
    "high": mean + half,
    "n": n,
    "values": list(values),
  }


def paired(values: list[float], reference: list[float], level: float = LEVEL) -> dict:
  """`values - reference`, seed by seed (the lists in the same seed order), as `interval` gives it,
  plus `resolved`: whether the interval excludes 0 (None with one seed)."""
  if len(values) != len(reference):
    raise ValueError(f"paired values need one per seed on both sides: {len(values)} and "
                     f"{len(reference)}")  # fmt: skip
  found = interval([v - r for v, r in zip(values, reference)], level)
  found["resolved"] = None if found["half"] is None else found["low"] > 0 or found["high"] < 0
  return found


def resolvable(std: float | None, n: int, level: float = LEVEL, power: float = 0.8) -> dict:
  """What a paired design of `n` seeds can resolve, given the spread `std` of the paired
  differences: `half`, the half-width of the interval (an observed difference smaller than this is
  not resolved), and `detectable`, the true difference it resolves with probability `power`
  (the usual approximation, `(t_(1+level)/2 + t_power) * std / sqrt(n)`). None with one seed."""
  if std is None or n < 2:
    return {"half": None, "detectable": None, "power": power}
  scale = std / math.sqrt(n)
  t_power = float(scipy_stats.t.ppf(power, n - 1))
  return {
    "half": t_quantile(n, level) * scale,
    "detectable": (t_quantile(n, level) + t_power) * scale,
    "power": power,
  }
