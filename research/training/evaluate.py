"""Evaluation on the test split, for the training loop and for `python run.py eval`.

`make_evaluator` is the one wiring of the jitted `eval_step` over the test batches.
`evaluate_checkpoint` rebuilds a saved run from the config stored in its checkpoint, so no
experiment file is needed, and verifies the step against its checksums first. It is read-only:
nothing in the workdir changes and its lock is not taken,
so a checkpoint can be evaluated while its run goes on.
"""

import json
import logging
import os
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from research.data import batches, splits
from research.errors import CheckpointError, CheckpointGone
from research.training import checkpoint, integrity
from research.training.distributed import global_array
from research.training.plan import Plan, make_plan
from research.training.state import TrainState, eval_step, grad_norms, layer_paths

log = logging.getLogger(__name__)
READ_ATTEMPTS = 5  # Newest checkpoints tried in turn while a live run deletes old ones.

Evaluator = Callable[[TrainState], dict]  # state -> {"test_loss", "test_accuracy"}


def make_evaluator(plan: Plan, test: splits.Split, stats) -> Evaluator:
  """A function of the state: mean loss and accuracy over every test example exactly once.

  `stats` are the training split's (mean, std) per channel (`splits.normalizer`); the last batch of
  `plan.eval_batch_size` is padded and masked.
  """
  replicated, split_batch = plan.shardings()
  eval_fn = jax.jit(eval_step, in_shardings=(replicated, split_batch), out_shardings=replicated)

  def evaluate(state: TrainState) -> dict:
    totals = None
    for batch in batches.eval_batches(test, stats, plan.eval_batch_size):
      sums = eval_fn(state, jax.tree.map(lambda x: global_array(x, split_batch), batch))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {
      "test_loss": float(totals["loss"] / totals["count"]),
      "test_accuracy": float(totals["correct"] / totals["count"]),
    }

  return evaluate


def with_grad_norms(
  evaluate: Evaluator, plan: Plan, state: TrainState, split: dict[str, jax.Array]
) -> Evaluator:
  """`evaluate` that also gives `grad_norm/<layer>`: the norm of the loss gradient with respect to
  each layer's parameters (`training.state.grad_norms`, input to output), on a fixed probe batch,
  the first `plan.batch_size` examples of the normalized training `split` (on the devices)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  batch_size = plan.batch_size
  paths = tuple(layer_paths(plan.model, variables, (batch_size, *plan.dataset.shape)))
  probe = {"image": split["image"][:batch_size], "label": split["label"][:batch_size]}
  norms_fn = jax.jit(grad_norms, static_argnums=2)

  def evaluate_with_norms(state: TrainState) -> dict:
    norms = jax.device_get(norms_fn(state, probe, paths))
    return {
      **evaluate(state),
      **{f"grad_norm/{'/'.join(p)}": float(norms["/".join(p)]) for p in paths},
    }

  return evaluate_with_norms


def evaluate_checkpoint(workdir: str, step: int | None = None) -> dict:
  """`step`, `epoch`, `batch_in_epoch`, `test_loss` and `test_accuracy` of checkpoint `step` in
  `workdir`.

  Without `step`, the newest valid checkpoint (corrupt newer ones are logged as warnings and
  skipped).
  """
  workdir = os.path.abspath(workdir)
  available = integrity.steps(workdir)
  if not available:
    raise CheckpointError(
      f"no checkpoint in {checkpoint.directory(workdir)}; train into this workdir "
      f"first (python run.py train --workdir={workdir})"
    )
  if step is not None and step not in available:
    raise CheckpointError(
      f"no checkpoint of step {step} in {checkpoint.directory(workdir)}; it holds "
      f"steps {', '.join(map(str, available))}"
    )
  with tempfile.TemporaryDirectory(prefix="convlab-eval-") as scratch:
    for attempt in range(1, READ_ATTEMPTS + 1):
      chosen = step if step is not None else integrity.latest_valid(workdir, quarantine=False)
      if chosen is None:
        raise CheckpointError(f"no checkpoint left in {checkpoint.directory(workdir)}")
      try:
        # A copy: a run training in this workdir deletes old steps under its keep policy.
        copy = checkpoint.snapshot(workdir, chosen, scratch)
      except CheckpointGone as e:
        # When no step was asked for, the newest one is what is wanted: take the new newest one.
        if step is not None or attempt == READ_ATTEMPTS:
          raise CheckpointGone(
            f"{e}; evaluate a step the run keeps (python run.py eval --workdir={workdir}), or "
            "wait for it to end"
          ) from None
        log.info(f"{e}; evaluating the newest checkpoint instead.")
        continue
      reason = integrity.verify(copy)
      if reason is not None:
        raise CheckpointError(
          f"checkpoint {os.path.join(checkpoint.directory(workdir), str(chosen))} is corrupt: "
          f"{reason}; evaluate another step (it holds steps {', '.join(map(str, available))})"
        )
      meta = checkpoint.read_meta(workdir, chosen, path=copy)
      config = ml_collections.ConfigDict(meta["config"])
      plan = make_plan(config)
      state, _ = checkpoint.restore(workdir, chosen, target=plan.abstract_state(), path=copy)
      break
  step = chosen
  train, test = splits.load(config)
  evaluate = make_evaluator(plan, test, splits.normalizer(train, plan.dataset.pixel_max))
  return {
    "step": step,
    "epoch": meta["epoch"],
    "batch_in_epoch": meta["batch_in_epoch"],
    **evaluate(state),
  }


def describe(result: dict, workdir: str) -> str:
  """Two lines: the result in words, then as JSON."""
  steps = f" and {result['batch_in_epoch']} steps" if result["batch_in_epoch"] else ""
  return (
    f"checkpoint {result['step']} (after {result['epoch']} epochs{steps}) in "
    f"{checkpoint.directory(workdir)}: test_loss {result['test_loss']:.4f}  test_accuracy "
    f"{100 * result['test_accuracy']:.2f}%\n{json.dumps(result)}"
  )
