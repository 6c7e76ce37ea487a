"""One training run: `train_and_evaluate(config, workdir)`, over the pure steps of `training.state`.

Data-parallel over all local devices: the batch is split along a `data` mesh axis and the state is
replicated; XLA inserts the gradient all-reduce. The same code runs on CPU, GPU and TPU.

Crash safety: a run holds `<workdir>/run.lock`, saves asynchronously under the `config.train` policy
and resumes from the newest valid checkpoint, mid-epoch included: killed at any point and rerun, it
ends with the parameters of an uninterrupted run, bit for bit. SIGTERM or Ctrl-C saves and stops; a
non-finite loss stops without saving.

Progress goes to the `research.training.train` logger (and the epoch lines to
`research.training.metrics`): a caller silences a run with
`logging.getLogger("research").setLevel(logging.WARNING)`.
"""

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tqdm

from research import config as config_lib
from research.data import pipeline as data
from research.errors import (
  CheckpointError,
  ConfigError,
  Interrupted,
  TrainingDiverged,
  UserError,
)
from research.training import checkpoint, lock, memory, metrics
from research.training.evaluate import make_evaluator
from research.training.plan import Plan, make_plan
from research.training.state import TrainState, all_finite, train_step

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PROGRESS_SECONDS = 60.0  # Without a terminal (a log file, a scheduler), a progress line this often.
CONFIG_CHANGES_FILE = "config_changes.jsonl"


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed; a workdir that cannot be written is a `UserError` naming it."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write-test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(
      f"workdir {workdir} is not writable ({e.strerror}); choose another with --workdir"
    ) from None
  return workdir


def _record_config_changes(
  config: ml_collections.ConfigDict, workdir: str, step: int, meta: dict
) -> None:
  """Refuses config changes that the checkpoint of `step` cannot continue under (a
  `CheckpointError`); allowed ones are logged and appended to `<workdir>/config_changes.jsonl`."""
  changes = checkpoint.config_changes(meta["config"], json.loads(config_lib.to_json(config)))
  checkpoint.check_resumable(changes, os.path.join(checkpoint.directory(workdir), str(step)))
  if changes:
    log.info(
      f"Config changes since step {step} (allowed; recorded in {CONFIG_CHANGES_FILE}): "
      + ", ".join(f"config.{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
      + "."
    )
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
      f.write(
        json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}}) + "\n"
      )


class NonFinite(Exception):
  """Raised inside the loop; the loop turns it into `TrainingDiverged` with the checkpoint
  context."""

  def __init__(self, step: int, what: str):
    super().__init__(what)
    self.step, self.what = step, what


class EpochLog:
  """Per-step loss and accuracy of the current epoch,
  read one step late so that the device never waits."""

  def __init__(self, losses=(), accuracies=()):
    self.losses, self.accuracies = list(losses), list(accuracies)
    self._pending = None

  def add(self, step: int, step_metrics: dict) -> None:
    """Keeps step `step`'s metrics (still on the device) and reads the previous step's."""
    self.flush()
    self._pending = (step, step_metrics)

  def flush(self) -> None:
    """Reads the pending step's metrics; a non-finite loss raises `NonFinite`."""
    if self._pending is not None:
      step, m = self._pending
      self._pending = None
      m = jax.device_get(m)
      if not math.isfinite(m["loss"]):
        raise NonFinite(step, f"the loss is {float(m['loss'])}")
      self.losses.append(float(m["loss"]))
      self.accuracies.append(float(m["accuracy"]))

  def means(self) -> dict:
    """`train_loss` and `train_accuracy`: the epoch's means,
    in float32 as the steps computed them."""
    return {
      "train_loss": float(np.mean(np.asarray(self.losses, np.float32))),
      "train_accuracy": float(np.mean(np.asarray(self.accuracies, np.float32))),
    }


class Saver:
  """The run's checkpoints under the `config.train` policy, and what saving cost the loop.

  `saved` is the newest step saved or restored (None before either); `blocked` the seconds the
  training thread waited for saves; `saves` how many it started.
  """

  def __init__(
    self,
    workdir: str,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    total_steps: int,
    restored: int | None,
  ):
    self.workdir, self.policy = workdir, config.train
    self.spe, self.total = steps_per_epoch, total_steps
    self.config_json = json.loads(config_lib.to_json(config))
    self.manager = checkpoint.make_manager(workdir, config.train)
    self.saved, self.blocked, self.saves = restored, 0.0, 0
    self.pending: int | None = None  # The step of the save in flight, until `check` sees it done.

  def due(self, step: int) -> bool:
    p = self.policy
    return checkpoint.due(
      step, self.spe, self.total, p.checkpoint_every_steps, p.checkpoint_every_epochs
    )

  def save(
    self, step: int, state: TrainState, epoch_log: EpochLog, record: dict | None = None
  ) -> None:
    """Saves `state` after step `step`, with the data position and the unfinished epoch's step
    metrics.

    Every loss up to `step` must have been checked (`epoch_log.flush()`); the state is checked here.
    """
    started = time.perf_counter()
    if not all_finite((state.params, state.opt_state, state.batch_stats)):
      raise NonFinite(step, "the parameters or optimizer state are not finite")
    mid_epoch = step % self.spe != 0
    with self._failed_save(step):
      self._start_save(step, state, epoch_log, record, mid_epoch)
    self.saved, self.saves, self.pending = step, self.saves + 1, step
    self.blocked += time.perf_counter() - started

  def _start_save(
    self, step: int, state: TrainState, epoch_log: EpochLog, record: dict | None, mid_epoch: bool
  ) -> None:
    checkpoint.save(
      self.manager,
      step,
      state,
      {  # Copies: the save serializes them after it returns.
        "step": step,
        "epoch": step // self.spe,
        "batch_in_epoch": step % self.spe,
        "steps_per_epoch": self.spe,
        "epoch_losses": list(epoch_log.losses) if mid_epoch else [],
        "epoch_accuracies": list(epoch_log.accuracies) if mid_epoch else [],
        "metrics": record,
        "config": self.config_json,
      },
      metrics=record,
    )

  def check(self, step: int) -> None:
    """Raises `CheckpointError` (one line: the workdir and its free space) if a save failed in the
    background (a full disk, say): the run stops after step `step` instead of training on.

    A save that is no longer in progress but whose step directory is not there failed; waiting for
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
        f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
        f"{free / 2**20:.0f} MiB free there; stopped after step {step}. Free some space (or fix "
        "the cause) and rerun: the run resumes from its last complete checkpoint"
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


class StopRequest:
  """Set by the first SIGTERM or SIGINT (Ctrl-C): the loop saves where it is and stops."""

  def __init__(self):
    self.signal: str | None = None

  def is_set(self) -> bool:
    return self.signal is not None


@contextlib.contextmanager
def _stop_signals() -> Iterator[StopRequest]:
  """A `StopRequest` that SIGTERM or SIGINT sets inside the `with`; a second SIGINT aborts at once
  (`KeyboardInterrupt`). Signals reach only the main thread; elsewhere it is never set."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def handle(signum, frame):
    if request.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt
    request.signal = request.signal or signal.Signals(signum).name

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates per epoch, checkpointing into `workdir`; resumes if it holds a checkpoint.

  Returns the last metrics record (see `training.metrics`).
  """
  # Everything that can be wrong with the config is found before anything is written.
  # The memory a step needs, from the shapes in the dataset's metadata: a model that cannot fit is
  # refused before the dataset is prepared or anything is compiled.
  need = memory.check(make_plan(config, static=True), config.data.batch_size)
  plan = make_plan(config)
  workdir = prepare_workdir(workdir)
  with lock.hold(workdir), _stop_signals() as stop:
    return _train(config, plan, need, workdir, stop)


def _resume(
  config: ml_collections.ConfigDict, plan: Plan, workdir: str
) -> tuple[TrainState, dict | None]:
  """(state, checkpoint meta) to continue from: the newest checkpoint that is valid, restores and
  may continue under `config` (`checkpoint.restore_newest`), or the initial state and None.

  Removes unfinished saves first; corrupt newer steps are quarantined; config changes the checkpoint
  cannot continue under are refused, allowed ones recorded.
  """
  removed = checkpoint.remove_unfinished(workdir)
  if removed:
    log.info(
      f"Removed {len(removed)} unfinished save(s) that an interrupted run left in "
      f"{checkpoint.directory(workdir)}: {', '.join(removed)}."
    )
  initial = plan.initial_state(config.seed)
  spe = plan.steps_per_epoch

  def check(step: int, meta: dict) -> None:
    if meta["steps_per_epoch"] != spe:  # The data position would mean other examples.
      raise CheckpointError(
        f"checkpoint {step} in {checkpoint.directory(workdir)} was saved with "
        f"{meta['steps_per_epoch']} steps per epoch and this run has {spe}: the dataset "
        "changed size; train into a new --workdir"
      )
    if step > plan.total_steps:  # It would train nothing and misdescribe the run in config.json.
      raise ConfigError(
        "train.num_epochs",
        f"{config.train.num_epochs} epochs ({plan.total_steps} steps) is fewer than the run in "
        f"{workdir} has done (its checkpoint is at step {step}, epoch {step / spe:g}); ask for "
        f"at least {math.ceil(step / spe)}, or train into a new --workdir",
      )
    _record_config_changes(config, workdir, step, meta)

  found = checkpoint.restore_newest(workdir, initial, check_meta=check)
  if found is None:
    return initial, None
  step, state, meta = found
  position = f", step {step % spe} of {spe}" if step % spe else ""
  log.info(
    f"Resuming from the checkpoint at step {step} (epoch {step // spe}{position}) in "
    f"{checkpoint.directory(workdir)}."
  )
  return state, meta


class _Progress:
  """Progress lines for a log: step, share done, steps/s and time left, every PROGRESS_SECONDS."""

  def __init__(self, start: int, total: int, now: float):
    self.start, self.total, self.started, self.last = start, total, now, now

  def update(self, step: int) -> None:
    now = time.perf_counter()
    if now - self.last < PROGRESS_SECONDS:
      return
    self.last = now
    rate = (step - self.start) / (now - self.started)
    left = (self.total - step) / rate if rate else float("inf")
    log.info(
      f"step {step}/{self.total} ({100 * step / self.total:.0f}%), {rate:.1f} steps/s, "
      f"about {left / 60:.1f} min left"
    )


def _diverged(e: NonFinite, saver: Saver, config: ml_collections.ConfigDict) -> TrainingDiverged:
  last = (
    f"the latest checkpoint, step {saver.saved} in {checkpoint.directory(saver.workdir)}, "
    "is the last good one and stays the latest"
    if saver.saved is not None
    else "no checkpoint was saved before it"
  )
  return TrainingDiverged(
    f"training diverged: {e.what} at step {e.step} (epoch {(e.step - 1) // saver.spe + 1}); "
    f"stopped without saving, and {last}. Lower config.optimizer.learning_rate "
    f"(now {config.optimizer.learning_rate}) or change what made it diverge, then rerun to "
    "continue from there."
  )


def _train(
  config: ml_collections.ConfigDict,
  plan: Plan,
  need: memory.Estimate,
  workdir: str,
  stop: StopRequest,
) -> dict:
  spe, total = plan.steps_per_epoch, plan.total_steps
  log.info(
    f"{plan.dataset.name}: {plan.dataset.num_train} train / {plan.dataset.num_test} test "
    f"examples of shape {plan.dataset.shape}; batch {config.data.batch_size} -> {spe} "
    f"steps per epoch, {config.train.num_epochs} epochs -> {total} steps on {len(plan.devices)} "
    f"{plan.devices[0].platform} device(s)."
  )
  have, where = memory.available(plan.devices)
  log.info(
    f"Memory per device, estimated from shapes: {need.describe()}"
    + (f"; {memory.size(have)} of {where}." if have is not None else f"; {where}.")
  )

  # ---------------------------------------------------------------------------------------------
  # Resume: the newest valid checkpoint, or the initial state; the workdir's files follow it.
  state, meta = _resume(config, plan, workdir)
  start = int(state.step)
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(config_lib.to_json(config))
  metrics.truncate_after(workdir, start)

  # ---------------------------------------------------------------------------------------------
  # Data, compiled steps and the sinks.
  loading = time.perf_counter()
  train, test = data.load(config)
  stats = data.normalizer(train, plan.dataset.pixel_max)
  log.info(f"Read {len(train)} train and {len(test)} test examples into memory in "
           f"{time.perf_counter() - loading:.1f} s (once per run).")  # fmt: skip
  replicated, split_batch = plan.shardings()
  train_fn = jax.jit(
    train_step,
    in_shardings=(replicated, split_batch),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  evaluate = make_evaluator(plan, test, stats, config.data.eval_batch_size)
  saver = Saver(workdir, config, spe, total, restored=start if meta else None)
  writer = metrics.MetricWriter(workdir)
  record = (metrics.read(workdir) or [{}])[-1]
  epoch_log = EpochLog(meta["epoch_losses"], meta["epoch_accuracies"]) if meta else EpochLog()

  def stop_if_asked(step: int, record: dict | None = None) -> None:
    if stop.is_set():
      if saver.saved != step:
        epoch_log.flush()
        saver.save(step, state, epoch_log, record)
      raise Interrupted(
        f"stopped by {stop.signal} at step {step} after saving it in "
        f"{checkpoint.directory(workdir)}; rerun the same command to resume"
      )

  # ---------------------------------------------------------------------------------------------
  # The epoch loop: from the checkpoint's epoch, skipping the batches it had done.
  step = start
  # A bar on a terminal; elsewhere tqdm is silent, so `progress` logs a line every PROGRESS_SECONDS.
  bar = tqdm.tqdm(total=total, initial=start, unit="step", disable=None, dynamic_ncols=True)
  loop_started = time.perf_counter()
  progress = _Progress(start, total, loop_started) if bar.disable else None
  try:
    for epoch in range(start // spe, config.train.num_epochs):
      started = time.perf_counter()
      # Batches of this epoch done before a mid-epoch checkpoint; 0 otherwise.
      skip = step - epoch * spe
      if not skip:
        epoch_log = EpochLog()
      batches = data.train_batches(train, stats, config.data.batch_size, config.seed, epoch)
      for batch in itertools.islice(batches, skip, None):
        state, step_metrics = train_fn(state, jax.device_put(batch, split_batch))
        step += 1
        epoch_log.add(step, step_metrics)
        bar.update()
        if progress is not None:
          progress.update(step)
        saver.check(step)  # A save that failed in the background stops the run here.
        if step % spe:  # The end of an epoch saves and stops below, after its evaluation.
          if saver.due(step):
            epoch_log.flush()
            saver.save(step, state, epoch_log)
          stop_if_asked(step)

      # -------------------------------------------------------------------------------------------
      # End of epoch: evaluate, write the metrics, save.
      epoch_log.flush()
      train_seconds = time.perf_counter() - started
      record = {
        "step": step,
        "epoch": epoch + 1,
        **epoch_log.means(),
        **evaluate(state),
        "learning_rate": float(plan.schedule(step - 1)),
      }
      writer.write(
        record,
        {
          "epoch_seconds": time.perf_counter() - started,
          "train_examples_per_second": (spe - skip) * config.data.batch_size / train_seconds,
        },
      )
      if saver.due(step):
        saver.save(step, state, epoch_log, record)
      stop_if_asked(step, record)
  except NonFinite as e:
    raise _diverged(e, saver, config) from None
  finally:
    bar.close()
    writer.close()
    saver.close(step)

  # ---------------------------------------------------------------------------------------------
  # Finish.
  elapsed = time.perf_counter() - loop_started
  if saver.saves:
    log.info(
      f"Checkpointing: {saver.saves} saves blocked training for {saver.blocked:.2f} s "
      f"of {elapsed:.2f} s ({100 * saver.blocked / max(elapsed, 1e-9):.1f}%)."
    )
  log.info(
    f"Done: test_accuracy {100 * record.get('test_accuracy', float('nan')):.2f}% after "
    f"{record.get('epoch', 0)} epochs. Results in {workdir} "
    f"(metrics.jsonl, tensorboard/, checkpoints/, {CONFIG_FILE})."
  )
  return record
