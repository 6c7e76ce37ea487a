"""The unfinished epoch's per-step loss and accuracy, and how a non-finite one stops a seed.

The steps' metrics stay on the device until `EpochLog.flush` reads them all at once (before every
save and at the end of the epoch), so the loop never waits for the device between steps; a
non-finite loss is still found at its own step (`NonFinite`), before anything after it is saved.
The loop turns a `NonFinite` into `TrainingDiverged` with `diverged`, naming the step and the last
good checkpoint.

What the loop may not reorder: `flush` before every save (a save records the epoch's step metrics
and must not follow a non-finite loss), and `add` once per dispatched step, in step order.
"""

import math

import jax
import numpy as np

from research.errors import TrainingDiverged

# Steps the host may dispatch ahead of the device. Unbounded, the host queued whole epochs, and
# over several CPU devices XLA's all-reduces then deadlocked (two threads waiting for a rendezvous
# that the busy thread pool never joined).
IN_FLIGHT = 8


class NonFinite(Exception):
  """A seed's loss or state stopped being finite at `step`; `what` says which."""

  def __init__(self, step: int, what: str):
    super().__init__(what)
    self.step, self.what = step, what


class EpochLog:
  """`losses` and `accuracies` of the epoch's steps read so far (floats, in step order), and the
  steps still on the device."""

  def __init__(self, losses=(), accuracies=()):
    self.losses, self.accuracies = list(losses), list(accuracies)
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, step_metrics: dict) -> None:
    """Keeps step `step`'s metrics (device arrays), and waits until the step `IN_FLIGHT` before it
    is done, without reading it: the host runs at most that far ahead of the device."""
    self._pending.append((step, step_metrics))
    if len(self._pending) > IN_FLIGHT:
      jax.block_until_ready(self._pending[-1 - IN_FLIGHT][1])

  def flush(self) -> None:
    """Reads the pending steps' metrics; the first non-finite loss raises `NonFinite`."""
    pending, self._pending = self._pending, []
    for step, m in zip((s for s, _ in pending), jax.device_get([m for _, m in pending])):
      if not math.isfinite(m["loss"]):
        raise NonFinite(step, f"the loss is {float(m['loss'])}")
      self.losses.append(float(m["loss"]))
      self.accuracies.append(float(m["accuracy"]))

  def means(self) -> dict:
    """`train_loss` and `train_accuracy`: the epoch's means, in float32 as the steps computed
    them."""
    return {
      "train_loss": float(np.mean(np.asarray(self.losses, np.float32))),
      "train_accuracy": float(np.mean(np.asarray(self.accuracies, np.float32))),
    }


def diverged(
  e: NonFinite, steps_per_epoch: int, saved: int | None, where: str, learning_rate: float
) -> TrainingDiverged:
  """The error of a seed that diverged: `saved` is its newest saved step (None: none), `where` its
  checkpoint directory."""
  last = (
    f"the latest checkpoint, step {saved} in {where}, is the last good one and stays the latest"
    if saved is not None
    else "no checkpoint was saved before it"
  )
  return TrainingDiverged(
    f"training diverged: {e.what} at step {e.step} (epoch {(e.step - 1) // steps_per_epoch + 1}); "
    f"stopped without saving, and {last}. Lower config.optimizer.learning_rate "
    f"(now {learning_rate}) or change what made it diverge, then rerun to continue from there."
  )
