"""Where a measurement was made: the jax version, the backend, the device and the CPU cores.

Reports embed it as `dataclasses.asdict(environment())`, the JSON object
`{"jax", "backend", "device", "device_count", "cpu_cores"}`; `Environment(**that_object)` reads
it back.
"""

import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class Environment:
  """The machine a measurement ran on, as this process sees it."""

  jax: str  # jax.__version__
  backend: str  # jax.default_backend(): "cpu", "gpu", "tpu"
  device: str  # The first device's kind ("cpu", "NVIDIA H100 80GB HBM3", ...).
  device_count: int  # Devices of every process.
  cpu_cores: int | None  # The cores this process may use (None where the OS does not say).


def environment() -> Environment:
  """The `Environment` of this process."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return Environment(
    jax=jax.__version__,
    backend=jax.default_backend(),
    device=jax.devices()[0].device_kind,
    device_count=jax.device_count(),
    cpu_cores=cores,
  )
