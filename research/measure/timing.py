"""The one timing harness: wall-clock seconds of a JAX call, after warm-up, waiting for the device.

Everything that times (`run.py cost`, `run.py bench`, ablations) calls `measure` (one function) or
`measure_interleaved` (several compared, taking turns), so every reported time means the same thing:
`warmup` untimed calls (the first compiles, if `fn` is jitted and not yet compiled), then `repeats`
calls each timed alone from the call to `jax.block_until_ready` on its outputs. JAX dispatches
asynchronously; without that wait a timer would measure the dispatch only.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

MIN_REPEATS = 5  # Fewer timed calls give no useful median on a shared machine.


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call over `n` timed calls, after `warmup` untimed ones."""

  min: float
  median: float
  max: float
  n: int
  warmup: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def measure(
  fn: Callable[..., Any],
  *args,
  warmup: int = 2,
  repeats: int = MIN_REPEATS,
  clock: Callable[[], float] = time.perf_counter,
) -> Timing:
  """Times `fn(*args)`: `warmup` (>= 1) untimed calls, then `repeats` (>= 5) timed ones.

  Each timed call ends when every array it returned is ready (`jax.block_until_ready`), so the time
  is the computation's, not its dispatch's. `args` are reused by every call: do not pass a function
  that donates its arguments. Returns min, median and max seconds per call.
  """
  return measure_interleaved({"fn": (fn, args)}, warmup=warmup, repeats=repeats, clock=clock)["fn"]


def measure_interleaved(
  calls: dict[str, tuple[Callable[..., Any], tuple]],
  warmup: int = 2,
  repeats: int = MIN_REPEATS,
  clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
  """`measure` for several functions, `{name: (fn, args)}`, taking turns: round r times every
  function's r-th call. On a shared machine, load that comes and goes then falls on all of them
  alike, so their ratios are steadier than those of back-to-back runs. Returns `{name: Timing}`.
  """
  if warmup < 1:
    raise ValueError(f"warmup must be >= 1 (the first call compiles), got {warmup}")
  if repeats < MIN_REPEATS:
    raise ValueError(f"repeats must be >= {MIN_REPEATS}, got {repeats}")
  for fn, args in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  seconds = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, args) in calls.items():
      start = clock()
      jax.block_until_ready(fn(*args))
      seconds[name].append(clock() - start)
  return {
    name: Timing(min=min(s), median=statistics.median(s), max=max(s), n=repeats, warmup=warmup)
    for name, s in seconds.items()
  }
