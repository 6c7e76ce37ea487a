"""Where a measurement was made: the jax version, the backend, the device and the CPU cores."""

import os

import jax


def environment() -> dict:
  """`{"jax", "backend", "device", "device_count", "cpu_cores"}` of this process
  (the cores it may use)."""
  device = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_cores": cores,
  }
