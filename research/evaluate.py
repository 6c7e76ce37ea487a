"""`python run.py eval`: a saved checkpoint's loss and accuracy on the test split.

The checkpoint's own resolved config rebuilds the model and the data, so no experiment file is needed, and the
step is verified against its checksums first. Read-only: nothing in the workdir changes and its lock is not taken,
so a checkpoint can be evaluated while its run goes on.
"""

import json
import os
import sys

import jax
import ml_collections

from research import checkpoint, data, train
from research.errors import CheckpointError


def evaluate_checkpoint(workdir: str, step: int | None = None) -> dict:
  """`step`, `epoch`, `batch_in_epoch`, `test_loss` and `test_accuracy` of checkpoint `step` in `workdir`.

  Without `step`, the newest valid checkpoint (corrupt newer ones are named on stderr and skipped).
  """
  workdir = os.path.abspath(workdir)
  available = checkpoint.steps(workdir)
  if not available:
    raise CheckpointError(f"no checkpoint in {checkpoint.directory(workdir)}; train into this workdir first "
                          f"(python run.py train --workdir={workdir})")
  if step is None:
    step = checkpoint.latest_valid(workdir, quarantine=False, log=lambda m: print(m, file=sys.stderr))
  elif step not in available:
    raise CheckpointError(f"no checkpoint of step {step} in {checkpoint.directory(workdir)}; it holds steps "
                          f"{', '.join(map(str, available))}")
  else:
    path = os.path.join(checkpoint.directory(workdir), str(step))
    reason = checkpoint.verify(path)
    if reason is not None:
      raise CheckpointError(f"checkpoint {path} is corrupt: {reason}; evaluate another step (it holds steps "
                            f"{', '.join(map(str, available))})")
  meta = checkpoint.read_meta(workdir, step)
  config = ml_collections.ConfigDict(meta["config"])
  plan = train.make_plan(config)
  state, _ = checkpoint.restore(workdir, step, target=plan.initial_state(config.seed))
  train_split, test = data.load(config)
  stats = data.normalizer(train_split, plan.dataset.pixel_max)
  replicated, split_batch = plan.shardings()
  eval_fn = jax.jit(train.eval_step, in_shardings=(replicated, split_batch), out_shardings=replicated)
  return {"step": step, "epoch": meta["epoch"], "batch_in_epoch": meta["batch_in_epoch"],
          **train.evaluate(state, eval_fn, test, stats, config.data.eval_batch_size, split_batch)}


def describe(result: dict, workdir: str) -> str:
  """Two lines: the result in words, then as JSON."""
  steps = f" and {result['batch_in_epoch']} steps" if result["batch_in_epoch"] else ""
  return (f"checkpoint {result['step']} (after {result['epoch']} epochs{steps}) in {checkpoint.directory(workdir)}: test_loss "
          f"{result['test_loss']:.4f}  test_accuracy {100 * result['test_accuracy']:.2f}%\n{json.dumps(result)}")
