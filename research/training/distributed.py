"""Several processes on JAX's own engine (`jax.distributed`): who starts them, who writes what.

A run over several processes (several hosts, or several processes on one host) is one SPMD
program: every process runs the same code on the same config, and the `data` mesh axis spans every
device of every process (`jax.devices()`). `initialize` connects them, from the `distributed`
config keys or the environment:

  distributed.coordinator     host:port of process 0    else $JAX_COORDINATOR_ADDRESS
  distributed.num_processes   how many processes         else $JAX_NUM_PROCESSES
  distributed.process_id      this one's, from 0         else $JAX_PROCESS_ID
  distributed.cluster_detection   True: let JAX find what is unset from the cluster it runs on
                                  (SLURM, Open MPI, Kubernetes, Cloud TPU pods)

With none of them set it does nothing: one process, its local devices.

Who writes what (the workdir must be one folder that every process sees, e.g. NFS or GCS):
  process 0 only   run.lock, config.json, config_changes.jsonl, metrics.jsonl, tensorboard/, the
                   console and the progress bar; the cleanup before a resume (unfinished saves
                   removed, corrupt steps quarantined); `checksums.json` of each step (Orbax runs
                   the sealing callback on its primary host, after every process wrote its part)
  every process    its shards of each checkpoint (Orbax saves and restores collectively), and
                   each global batch's shards on its own devices (`global_array`)
Every process computes the same data order (a function of seed and epoch), so they agree on it
without talking. A stop signal (SIGTERM, Ctrl-C) to any process stops them all at the same step,
saved: they agree every `stopping.AGREEMENT_STEPS` steps and at each epoch's end.
"""

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import config_dict

from research.config import is_int
from research.errors import ConfigError, UserError, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")
ENV = {
  "coordinator": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{coordinator, num_processes, process_id}: each from `config.distributed`, else from its
  environment variable (`ENV`), else None; a value that cannot be right is a `ConfigError`. A config
  without a `distributed` section (an experiment file of its own) reads the environment only."""
  section = _section(config)
  found = {}
  for key, variable in ENV.items():
    value = section[key]
    if value is None and os.environ.get(variable):
      value = os.environ[variable]
      if key != "coordinator":
        try:
          value = int(value)
        except ValueError:
          raise ConfigError(
            f"distributed.{key}", f"${variable} is {value!r}, not an integer"
          ) from None
    found[key] = value
  n, i = found["num_processes"], found["process_id"]
  if n is not None and not (is_int(n) and n >= 1):
    raise ConfigError("distributed.num_processes", f"must be an integer from 1, got {n!r}")
  if i is not None and not (is_int(i) and 0 <= i < (n or 2**31)):
    raise ConfigError(
      "distributed.process_id", f"must be an integer from 0 to num_processes - 1, got {i!r}"
    )
  if not isinstance(section.cluster_detection, bool):
    raise ConfigError("distributed.cluster_detection", "must be True or False")
  if not (is_int(section.timeout_seconds) and section.timeout_seconds >= 1):
    raise ConfigError(
      "distributed.timeout_seconds", f"must be an integer from 1, got {section.timeout_seconds!r}"
    )
  if (n or 1) > 1 and not section.cluster_detection and None in found.values():
    missing = [f"distributed.{k} (or ${ENV[k]})" for k, v in found.items() if v is None]
    raise ConfigError(
      "distributed", f"{n} processes need {', '.join(missing)} too, or cluster_detection=True"
    )
  return found


def defaults() -> ml_collections.ConfigDict:
  """The `distributed` config section at its defaults: the one place they are written
  (`experiments/default.py` uses it; a config without the section gets it here).

  None means: from the environment variable (`ENV`); none set, one process."""
  section = ml_collections.ConfigDict()
  section.coordinator = config_dict.placeholder(str)  # host:port of process 0.
  section.num_processes = config_dict.placeholder(int)
  section.process_id = config_dict.placeholder(int)  # This process's, from 0.
  # True: JAX finds what is unset from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU pods).
  section.cluster_detection = False
  section.timeout_seconds = 300  # How long a process waits for the others to join.
  return section


def _section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.distributed`, its missing keys at their `defaults` (untyped: `settings` checks the
  values, naming the key)."""
  section = ml_collections.ConfigDict(defaults().to_dict())
  for key, value in (config.get("distributed") or {}).items():
    section[key] = value
  return section


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Connects this process to the others (`jax.distributed.initialize`) when the config or the
  environment asks for several processes; before anything else touches JAX's devices. Returns
  whether it did. On CPU the processes' collectives go over gloo."""
  found, section = settings(config), _section(config)
  if not section.cluster_detection and (found["num_processes"] or 1) == 1:
    return False
  if jax.distributed.is_initialized():
    return True
  if found["coordinator"] is not None and found["process_id"] is not None:
    _check_reachable(found["coordinator"], found["process_id"], section.timeout_seconds)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
      coordinator_address=found["coordinator"],
      num_processes=found["num_processes"],
      process_id=found["process_id"],
      initialization_timeout=section.timeout_seconds,
    )
  except Exception as e:  # JAX raises RuntimeError, ValueError or XlaRuntimeError here.
    raise UserError(
      f"could not join the processes of this run (coordinator {found['coordinator']}, "
      f"{found['num_processes']} processes, this one {found['process_id']}): "
      f"{first_line(e, with_type=False)}"
    ) from None
  if is_writer():
    log.info(
      f"{jax.process_count()} processes joined, {jax.device_count()} devices in all "
      f"({jax.local_device_count()} in process 0)."
    )
  return True


def _check_reachable(coordinator: str, process_id: int, timeout: float) -> None:
  """A `ConfigError` unless process 0 can listen on `coordinator`'s port, or another process can
  connect to it within `timeout` seconds: JAX aborts the whole process (a C++ fatal error, with
  a stack trace) where it cannot, so this says it in one line first."""
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError("distributed.coordinator", f"must be host:port, got {coordinator!r}")
  if process_id == 0:
    try:
      with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", int(port)))
    except OSError as e:
      raise ConfigError(
        "distributed.coordinator",
        f"process 0 cannot listen on port {port} ({e.strerror}); choose a free port",
      ) from None
    return
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=2).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConfigError(
          "distributed.coordinator",
          f"nothing answered at {coordinator} within {timeout} s ({e.strerror or e}); start "
          "process 0 there first, or check the address",
        ) from None
      time.sleep(0.5)


def is_writer() -> bool:
  """Whether this process writes the run's files and lines (process 0)."""
  return jax.process_index() == 0


def several() -> bool:
  return jax.process_count() > 1


def barrier(name: str) -> None:
  """Waits until every process got here (nothing to wait for in one process)."""
  if several():
    multihost_utils.sync_global_devices(name)


def writer_first(name: str, work: Callable[[], T]) -> T:
  """`work()` on process 0, then on the others: what process 0 prepares on the shared disk (a
  dataset, a cleaned checkpoint folder), the others then find ready. An error on process 0 still
  releases the others, so they do not wait for it forever."""
  if not several():
    return work()
  if is_writer():
    try:
      return work()
    finally:
      barrier(name)
  barrier(name)
  return work()


def any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process (in one process, `flag`)."""
  if not several():
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def broadcast(value: int) -> int:
  """Process 0's `value` (an int) on every process."""
  if not several():
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """`host`, the same global value in every process, as one array laid out by `sharding`: each
  process puts on its own devices only the shards they hold (`jax.make_array_from_callback`), so
  of a batch split over the `data` axis it feeds only its own slice."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
