"""Saving a seed's checkpoints during training, under the `config.train` policy.

`Saver` promises:
- `save(step, ...)` checks the state is finite (a `NonFinite` otherwise, nothing saved), then
  starts an asynchronous Orbax save (`training.checkpoint`) of the state and the data position,
  and returns once the state is copied to host memory;
- a save that failed in the background (a full disk) is found by `check` at the next step, and
  stops the run with one line (`CheckpointError`: the workdir and its free space), instead of
  training on;
- `close` waits for the last save: an exit never cuts one short.

`saved` is the newest step saved or restored (None before either), `saves` how many saves it
started, `blocked` the seconds the training thread waited for them.

What the loop may not reorder: `EpochLog.flush()` before `save` (every loss up to the step checked,
and the epoch's step metrics complete); `check` after every step; over several processes every
process saves the same steps, since Orbax saves collectively.
"""

import contextlib
import os
import shutil
import time
from collections.abc import Iterator

import ml_collections

from research.errors import CheckpointError, UserError, first_line
from research.training import checkpoint
from research.training.epoch_log import EpochLog, NonFinite
from research.training.hooks import Hooks
from research.training.state import TrainState, all_finite


class Saver:
  """One seed's checkpoints in `<workdir>/checkpoints`; `config_json` is the resolved config saved
  in every step's meta, `restored` the step the run resumed from (None: a fresh start)."""

  def __init__(
    self,
    workdir: str,
    policy: ml_collections.ConfigDict,
    steps_per_epoch: int,
    total_steps: int,
    config_json: dict,
    restored: int | None,
    hooks: Hooks,
  ):
    self.workdir, self.policy, self.hooks = workdir, policy, hooks
    self.spe, self.total, self.config_json = steps_per_epoch, total_steps, config_json
    self.manager = checkpoint.make_manager(workdir, policy, on_commit=hooks.on_commit)
    self.saved, self.blocked, self.saves = restored, 0.0, 0
    self.pending: int | None = None  # The step of the save in flight, until `check` sees it done.

  def due(self, step: int) -> bool:
    """Whether the policy saves after step `step`."""
    p = self.policy
    return checkpoint.due(
      step, self.spe, self.total, p.checkpoint_every_steps, p.checkpoint_every_epochs
    )

  def save(
    self, step: int, state: TrainState, epoch_log: EpochLog, record: dict | None = None
  ) -> None:
    """Saves `state` after step `step`, with the data position, the unfinished epoch's step
    metrics and, at an epoch's end, its metrics `record`."""
    started = time.perf_counter()
    if not all_finite((state.params, state.opt_state, state.batch_stats)):
      raise NonFinite(step, "the parameters or optimizer state are not finite")
    mid_epoch = step % self.spe != 0
    meta = {  # Copies: the save serializes them after it returns.
      "step": step,
      "epoch": step // self.spe,
      "batch_in_epoch": step % self.spe,
      "steps_per_epoch": self.spe,
      "epoch_losses": list(epoch_log.losses) if mid_epoch else [],
      "epoch_accuracies": list(epoch_log.accuracies) if mid_epoch else [],
      "metrics": record,
      "config": self.config_json,
    }
    with self._failed_save(step):
      checkpoint.save(self.manager, step, state, meta, metrics=record)
    self.saved, self.saves, self.pending = step, self.saves + 1, step
    self.blocked += time.perf_counter() - started
    if self.hooks.on_save is not None:
      self.hooks.on_save(step)

  def check(self, step: int) -> None:
    """Raises `CheckpointError` if the save in flight failed in the background: the run stops after
    step `step`. A save no longer in progress whose step directory is not there failed; waiting for
    it re-raises its error (Orbax keeps it for the next save otherwise)."""
    pending = self.pending
    if pending is None or self.manager.is_saving_in_progress():
      return
    self.pending = None
    if not os.path.isdir(os.path.join(checkpoint.directory(self.workdir), str(pending))):
      with self._failed_save(step):
        self.manager.wait_until_finished()
        self.manager.check_for_errors()
        raise OSError(f"step {pending} was not committed")

  def wait(self) -> None:
    """Blocks until every save started so far has committed (or failed)."""
    self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _failed_save(self, step: int) -> Iterator[None]:
    """Turns whatever a background save raised (Orbax re-raises it) into one line."""
    try:
      yield
    except UserError:
      raise
    except Exception as e:
      free = shutil.disk_usage(self.workdir).free
      raise CheckpointError(
        f"saving a checkpoint into {checkpoint.directory(self.workdir)} failed "
        f"({first_line(e, limit=10_000)}); {free / 2**20:.0f} MiB free there; stopped after step "
        f"{step}. Free some space (or fix the cause) and rerun: the run resumes from its last "
        "complete checkpoint"
      ) from None

  def close(self, step: int) -> None:
    """Waits for the last save: an async save still writing must not be cut short by the exit."""
    waited = time.perf_counter()
    try:
      with self._failed_save(step):
        self.manager.wait_until_finished()
        self.manager.check_for_errors()
    finally:
      self.manager.close()
      self.blocked += time.perf_counter() - waited
