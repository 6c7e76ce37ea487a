"""`run.py bench`: the throughput of a config's train step (`training.state.train_step`), jitted.

Timed with the one harness (`measure.timing`) on one random batch of the dataset's shape, so no data
loading is included: this is the step's speed, against which the training loop is compared.
"""

import jax
import ml_collections

from research.errors import UserError
from research.measure import subjects, timing
from research.measure.environment import environment


def bench(config: ml_collections.ConfigDict, warmup: int = 3, repeats: int = 10) -> dict:
  """Training-step throughput of the config's model and optimizer at its batch size
  (`measure.schemas.BENCH_SCHEMA`). The step is jitted without donating the state, because the
  harness reuses its arguments."""
  if warmup < 1 or repeats < timing.MIN_REPEATS:
    raise UserError(
      f"bench needs --warmup >= 1 and --repeats >= {timing.MIN_REPEATS}, got {warmup} and {repeats}"
    )
  subject = subjects.model_subject(config)
  step, args = subject.passes["train_step"]
  seconds = timing.measure(jax.jit(step), *args, warmup=warmup, repeats=repeats)
  batch = config.data.batch_size
  step_flops = subject.totals.train_step_flops
  return {
    "schema": "convlab.bench/1",
    "environment": environment(),
    "model": config.model.name,
    "optimizer": config.optimizer.name,
    "batch_size": batch,
    "input_shape": list(args[1]["image"].shape[1:]),
    "params": subject.totals.params,
    "train_step_flops": step_flops,
    "seconds": seconds.to_dict(),
    "steps_per_second": 1.0 / seconds.median,
    "examples_per_second": batch / seconds.median,
    "flops_per_second": step_flops / seconds.median,
  }
