"""XLA's own figures for a compiled function: FLOPs and bytes accessed, and the peak memory.

The cross-check of the analytic counts in `measure.flops` (which documents how the two differ).
"""

from collections.abc import Callable
from typing import Any

import jax


def xla_cost(compiled) -> dict:
  """`{"flops", "bytes_accessed"}` from `compiled.cost_analysis()`,
  each None where the backend gives none.

  The format varies: a dict (jax 0.10 on CPU), a list with one dict per computation (older jax), or
  None; some GPU backends report -1 for unknown.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # Unimplemented on some backends; the type varies.
    analysis = None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None

  def value(key):
    v = analysis.get(key) if isinstance(analysis, dict) else None
    return float(v) if v is not None and v >= 0 else None

  return {"flops": value("flops"), "bytes_accessed": value("bytes accessed")}


def peak_memory(compiled) -> int | None:
  """Peak bytes the compiled computation holds (arguments, outputs and temporaries),
  None if unknown."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # Unimplemented on some backends; the type varies.
    return None
  if stats is None:
    return None
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    return int(peak)
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def compile_pass(fn: Callable[..., Any], args: tuple) -> tuple[Any, dict]:
  """`fn` compiled for `args`, with XLA's FLOPs and bytes accessed and the peak memory bytes."""
  compiled = jax.jit(fn).lower(*args).compile()
  xla = xla_cost(compiled)
  return compiled, {
    "xla_flops": xla["flops"],
    "xla_bytes": xla["bytes_accessed"],
    "peak_bytes": peak_memory(compiled),
  }
