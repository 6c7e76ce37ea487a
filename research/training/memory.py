"""How much memory a training run needs, estimated from traced shapes before anything is compiled,
and how much the machine has.

`estimate(plan, batch_size)` traces the initial state and the loss's backward pass with
`jax.eval_shape` (shapes only: nothing is allocated or compiled) and counts, in bytes, for one
device's share of a training step:

- `state`: the parameters, the optimizer's state and the BatchNorm statistics (donated to the step,
  so held once);
- `gradients`: one more copy of the parameters;
- `activations`: the residuals the backward pass keeps (`jax.vjp`'s saved values: layer outputs,
  ReLU masks, ...) for the device's share of the batch, plus the batch itself;
- `working`: twice the largest residual, for the gradient of a layer's output while the next is
  computed.

It is an estimate, within a small factor of what XLA allocates (`tests/training/test_memory.py`
compares it with the compiled step's own memory analysis): enough to refuse a model that cannot
fit before minutes are spent compiling it, not to plan to the last megabyte.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.nn import heads
from research.training.state import loss_fn

if TYPE_CHECKING:  # The plan carries the estimate (`training.plan`): the type only, no cycle.
  from research.training.plan import Plan

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes one device needs for one training step (see the module docstring)."""

  params: int  # Of which `state` holds one copy.
  state: int
  gradients: int
  activations: int
  working: int

  @property
  def total(self) -> int:
    return self.state + self.gradients + self.activations + self.working

  def describe(self) -> str:
    """`"about 105 MiB (parameters 3.15 MiB, optimizer state and statistics 6.29 MiB, ...)"`."""
    return (
      f"about {size(self.total)} (parameters {size(self.params)}, optimizer state and "
      f"statistics {size(self.state - self.params)}, gradients {size(self.gradients)}, "
      f"activations {size(self.activations)}, working {size(self.working)})"
    )


def size(n: int) -> str:
  """`n` bytes in MiB below 1 GiB, else in GiB, to 3 significant digits."""
  return f"{n / GiB:.3g} GiB" if n >= GiB else f"{n / 2**20:.3g} MiB"


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def estimate(plan: Plan, batch_size: int) -> Estimate:
  """The memory one device needs to train `plan`'s model on its share of a batch of
  `batch_size` examples, from shapes alone."""
  shape = tuple(plan.dataset.shape)
  state = plan.abstract_state()
  per_device = -(-batch_size // len(plan.devices))
  batch = {
    "image": jax.ShapeDtypeStruct((per_device, *shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((per_device,), jnp.int32),
  }

  def backward(state, batch):
    _, vjp, _ = jax.vjp(
      lambda p: loss_fn(p, state, batch, jax.random.PRNGKey(0)), state.params, has_aux=True
    )
    return vjp  # A `Partial` whose leaves are the residuals the backward pass keeps.

  residuals = jax.tree.leaves(jax.eval_shape(backward, state, batch))
  largest = max((_bytes(r) for r in residuals), default=0)
  params = _bytes(state.params)
  return Estimate(
    params=params,
    state=_bytes((state.params, state.opt_state, state.batch_stats)),
    gradients=params,
    activations=_bytes(residuals) + _bytes(batch),
    working=2 * largest,
  )


def check(plan: Plan, batch_size: int, seeds: int = 1) -> Estimate:
  """`estimate(plan, batch_size)`, or a `ConfigError` naming the model's size keys when `seeds`
  times it (seeds trained together, `training.train.train_seeds`) exceeds the memory available to
  one device."""
  need = estimate(plan, batch_size)
  have, where = available(plan.devices)
  if have is not None and seeds * need.total > have:
    several = f" for each of {seeds} seeds trained together" if seeds > 1 else ""
    fewer = ", or train fewer seeds together" if seeds > 1 else ""
    raise ConfigError(
      "model",
      f"training this model at batch {batch_size} needs {need.describe()} per device{several}, "
      f"more than the {size(max(have, 0))} of {where}: make it smaller ({_size_keys(plan)}) or "
      f"lower data.batch_size{fewer}",
    )
  return need


def _size_keys(plan: Plan) -> str:
  """The model fields that set its size, as config keys (`model.widths, model.hidden`)."""
  keys = [f"model.{k}" for k in ("widths", "stage_sizes", "stem_width") if hasattr(plan.model, k)]
  head = getattr(plan.model, "head", None)
  if getattr(head, "func", head) is heads.DenseHead:  # The class, or a functools.partial of it.
    keys.append("model.hidden")
  return ", ".join(keys) or "model.*"


def available(devices: tuple) -> tuple[int | None, str]:
  """(bytes one device may use, where that figure comes from); None when unknown.

  Accelerators: the device's own limit less what is in use (`memory_stats()`). CPU devices share
  the host's memory: what the kernel reports available (`MemAvailable`), capped by the cgroup's
  limit (containers), divided among the devices.
  """
  device = devices[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
      return None, f"{device.platform} memory unknown"
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.device_kind} memory"
  host = _host_available()
  if host is None:
    return None, "host memory unknown"
  return host // len(devices), "host memory available" + (
    f", shared by {len(devices)} CPU devices" if len(devices) > 1 else ""
  )


def _host_available() -> int | None:
  """Bytes the host can give this process: MemAvailable, capped by a cgroup v2 or v1 limit."""
  found = []
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          found.append(int(line.split()[1]) * 1024)
  except (OSError, ValueError, IndexError):
    pass
  for limit, used in (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
  ):
    try:
      with open(limit) as f, open(used) as g:
        found.append(int(f.read().strip()) - int(g.read().strip()))
    except (OSError, ValueError):  # Absent, or "max" (no limit).
      continue
  if not found and hasattr(os, "sysconf"):
    try:
      found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):
      pass
  return min(found) if found else None
