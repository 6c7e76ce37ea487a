"""One process of a multi-process training run, for tests/training/test_distributed.py.

  python tests/training/distributed_worker.py OUT WORKDIR PROCESS_ID NUM_PROCESSES PORT \
    [--config.KEY=VALUE ...]

Trains the default experiment (with the `--config.KEY=VALUE` overrides) as process PROCESS_ID of
NUM_PROCESSES, localhost:PORT its coordinator, by calling `run.py train` in this process
(`run.main`), and writes into OUT what the test needs to see from inside the process:
  params_<id>.npz   the final parameters, as the training loop holds them at the end
  fed_<id>.json     every batch shard this process handed to JAX for the epochs' orders
                    (`jax.make_array_from_callback`'s callback results), in order
"""

import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from research.training import hooks  # noqa: E402

import run  # noqa: E402


def main(out: str, workdir: str, process_id: int, num_processes: int, port: int, *overrides):
  fed = []
  make = jax.make_array_from_callback

  def recording(shape, sharding, callback, *args, **kwargs):
    def record(index):
      shard = callback(index)
      if shard.dtype == np.int32 and shard.ndim == 2:  # An epoch's order: [steps, batch shard].
        fed.append(np.asarray(shard).tolist())
      return shard

    return make(shape, sharding, record, *args, **kwargs)

  jax.make_array_from_callback = recording

  def keep_params(seed, state):
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(
      os.path.join(out, f"params_{process_id}.npz"),
      **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat},
    )

  hooks.installed = hooks.Hooks(on_close=keep_params)  # The loop's seam for a harness.
  code = run.main(
    [
      "train",
      f"--workdir={workdir}",
      *overrides,
      f"--config.distributed.num_processes={num_processes}",
      f"--config.distributed.process_id={process_id}",
      f"--config.distributed.coordinator=localhost:{port}",
    ]
  )
  with open(os.path.join(out, f"fed_{process_id}.json"), "w") as f:
    json.dump(fed, f)
  return code


if __name__ == "__main__":
  out, workdir, pid, n, port, *rest = sys.argv[1:]
  sys.exit(main(out, workdir, int(pid), int(n), int(port), *rest))
