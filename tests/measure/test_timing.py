"""The timing harness: warm-up untimed, each timed call waits for its result, min/median/max."""

import itertools
import time

import jax
import jax.numpy as jnp
import pytest

from research.measure import timing


class _Result:
  """Stands in for an array still being computed: records when it is waited for."""

  def __init__(self, log):
    self.log = log

  def block_until_ready(self):
    self.log.append("ready")
    return self


def _logged(log):
  """A function and a clock that both write to `log`; the clock ticks 1, 2, 3, ... seconds apart."""
  ticks = itertools.accumulate(itertools.count(1), initial=0)

  def fn():
    log.append("call")
    return {"out": _Result(log)}

  def clock():
    log.append("clock")
    return float(next(ticks))

  return fn, clock


def test_warmup_calls_are_untimed_and_every_timed_call_waits_for_its_result():
  log = []
  fn, clock = _logged(log)
  timing.measure(fn, warmup=2, repeats=5, clock=clock)
  assert log == ["call", "ready"] * 2 + ["clock", "call", "ready", "clock"] * 5


def test_interleaved_functions_take_turns_after_each_is_warmed_up():
  log = []

  def make(name):
    return lambda: log.append(name)

  result = timing.measure_interleaved(
    {"a": (make("a"), ()), "b": (make("b"), ())}, warmup=1, repeats=5
  )
  assert "".join(log) == "ab" + "ab" * 5
  assert set(result) == {"a", "b"} and all(t.n == 5 for t in result.values())


def test_reports_min_median_max_of_the_timed_calls():
  fn, clock = _logged([])
  result = timing.measure(fn, warmup=1, repeats=5, clock=clock)  # Calls take 1, 3, 5, 7, 9 ticks.
  assert (result.min, result.median, result.max, result.n, result.warmup) == (1.0, 5.0, 9.0, 5, 1)
  assert result.to_dict() == {"min": 1.0, "median": 5.0, "max": 9.0, "n": 5, "warmup": 1}


def test_a_jitted_function_compiles_during_warmup_not_while_timed():
  traces = []
  f = jax.jit(lambda x: (traces.append(1), jnp.sin(x) @ x)[1])
  traced_when_timed = []

  def clock():
    traced_when_timed.append(len(traces))
    return 0.0

  timing.measure(f, jnp.ones((8, 8)), warmup=1, repeats=5, clock=clock)
  assert traced_when_timed == [1] * 10


def test_the_real_clock_times_every_call_whole():
  result = timing.measure(lambda: time.sleep(0.02), warmup=1, repeats=5)  # 20 ms a call, at least.
  assert result.min >= 0.02 and result.median < 1.0 and result.n == 5


@pytest.mark.parametrize("warmup, repeats", [(0, 5), (1, 4)])
def test_too_few_warmup_or_timed_calls_are_refused(warmup, repeats):
  with pytest.raises(ValueError):
    timing.measure(lambda: 0, warmup=warmup, repeats=repeats)
