"""One training run: `train_and_evaluate(config, workdir)`, over the pure steps of `training.state`.

Data-parallel over all devices: the batch is split along a `data` mesh axis and the state is
replicated; XLA inserts the gradient all-reduce. The same code runs on CPU, GPU and TPU, in one
process or several (`training.distributed` says which process writes what).

Crash safety: a run holds `<workdir>/run.lock`, saves asynchronously under the `config.train` policy
and resumes from the newest valid checkpoint, mid-epoch included: killed at any point and rerun, it
ends with the parameters of an uninterrupted run, bit for bit. SIGTERM or Ctrl-C saves and stops; a
non-finite loss stops without saving.

Progress goes to the `research.training.train` logger (and the epoch lines to
`research.training.metrics`): a caller silences a run with
`logging.getLogger("research").setLevel(logging.WARNING)`.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator

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
from research.training import checkpoint, distributed, lock, memory, metrics
from research.training.evaluate import make_evaluator
from research.training.plan import Plan, make_plan
from research.training.state import (
  TrainState,
  all_finite,
  grad_norms,
  layer_paths,
  parallel_steps,
  seeds_formulation,
  vmapped_steps,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
IN_FLIGHT = 8  # Steps the host may dispatch ahead of the device (`EpochLog.add`).
PROGRESS_SECONDS = 60.0  # Without a terminal (a log file, a scheduler), a progress line this often.
CONFIG_CHANGES_FILE = "config_changes.jsonl"
# Over several processes, how often they agree whether any was asked to stop (and at each epoch's
# end): a collective, so not at every step.
STOP_AGREEMENT_STEPS = 16


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed; a workdir that cannot be written is a `UserError` naming it."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    if not distributed.is_writer():  # Process 0 checked it (`distributed.writer_first`).
      return workdir
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
  `CheckpointError`, in every process); allowed ones are logged and appended to
  `<workdir>/config_changes.jsonl` (by process 0)."""
  changes = checkpoint.config_changes(meta["config"], json.loads(config_lib.to_json(config)))
  checkpoint.check_resumable(changes, os.path.join(checkpoint.directory(workdir), str(step)))
  if changes and distributed.is_writer():
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
  """Per-step loss and accuracy of the current epoch. The steps' metrics stay on the device until
  `flush` reads them all at once (before every save and at the end of the epoch), so the loop never
  waits for the device between steps; a non-finite loss is still found at its own step, and
  before anything after it is saved."""

  def __init__(self, losses=(), accuracies=()):
    self.losses, self.accuracies = list(losses), list(accuracies)
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, step_metrics: dict) -> None:
    """Keeps step `step`'s metrics (still on the device), and waits until the step `IN_FLIGHT`
    before it is done (without reading it): the host runs at most that far ahead of the device.
    Unbounded, it queued whole epochs, and over several CPU devices XLA's all-reduces then
    deadlocked (two threads waiting for a rendezvous that the busy thread pool never joined)."""
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


@dataclasses.dataclass
class LoopTiming:
  """What each epoch trained in this process took: (steps, seconds) in order, the seconds from
  the epoch's first step to its last step's result, plus the time the end-of-epoch save blocked
  the loop (so data, metrics, the progress bar and checkpoints are in; evaluation is not). The
  first epoch's seconds include compiling the step."""

  epochs: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, timing: LoopTiming | None = None
) -> dict:
  """Trains and evaluates per epoch, checkpointing into `workdir`; resumes if it holds a checkpoint.

  Returns the last metrics record (see `training.metrics`); fills `timing`, if given, with what
  each epoch took (`run.py bench` compares it with the bare step).
  """
  return train_seeds(config, {config.seed: workdir}, timing)[config.seed]


def train_seeds(
  config: ml_collections.ConfigDict,
  workdirs: dict[int, str],
  timing: LoopTiming | None = None,
  advance: Callable[[int], None] | None = None,
) -> dict[int, dict]:
  """`train_and_evaluate` for several seeds of one config at once: seed `s` (`config.seed` set to
  it) trains into `workdirs[s]`, exactly as a run of its own would (its checkpoints, metrics and
  resume; the same numbers, bit for bit on CPU), but all their steps at a given step number are one
  compiled call (`parallel_steps`). Returns each seed's last metrics record.

  Seeds whose checkpoints stand at different steps train in groups, one group after another. A seed
  that diverges stops (nothing saved after its last good step) and the others go on; the run then
  ends with `TrainingDiverged` naming it.

  With `advance`, the caller shows the progress: it is called with the number of steps done (all
  seeds together) after each call of the steps, and the run draws no progress bar of its own.
  """
  # Everything that can be wrong with the config is found before anything is written.
  # The memory a step needs, from the shapes in the dataset's metadata: a model that cannot fit is
  # refused before the dataset is prepared or anything is compiled.
  need = memory.check(make_plan(config, static=True), config.data.batch_size, len(workdirs))
  # Over several processes, process 0 prepares the dataset and the others then read it.
  plan = distributed.writer_first("convlab:plan", lambda: make_plan(config))
  several = len(workdirs) > 1
  with contextlib.ExitStack() as held:
    runs = []
    for seed, workdir in workdirs.items():
      workdir = distributed.writer_first("convlab:workdir", lambda w=workdir: prepare_workdir(w))
      if distributed.is_writer():  # Process 0 holds the lock for all (`training.distributed`).
        held.enter_context(lock.hold(workdir))
      seeded = ml_collections.ConfigDict(config.to_dict())
      seeded.seed = seed
      runs.append(_Run(seeded, workdir, f"seed {seed}: " if several else ""))
    stop = held.enter_context(_stop_signals())
    _train(plan, need, runs, stop, timing, advance)
  diverged = [run for run in runs if run.diverged is not None]
  if diverged:
    if not several:
      raise diverged[0].diverged
    raise TrainingDiverged(
      f"training diverged for seed(s) {', '.join(str(r.config.seed) for r in diverged)} (the "
      f"others finished): {'; '.join(str(r.diverged) for r in diverged)}"
    )
  return {run.config.seed: run.record for run in runs}


def _resume(
  config: ml_collections.ConfigDict, plan: Plan, workdir: str
) -> tuple[TrainState, dict | None]:
  """(state, checkpoint meta) to continue from: the newest checkpoint that is valid, restores and
  may continue under `config` (`checkpoint.restore_newest`), or the initial state and None.

  Removes unfinished saves first; corrupt newer steps are quarantined; config changes the checkpoint
  cannot continue under are refused, allowed ones recorded. Over several processes, see
  `_resume_together`.
  """
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

  if distributed.several():
    found = _resume_together(workdir, initial, check)
  else:
    _remove_unfinished(workdir)
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


def _remove_unfinished(workdir: str) -> None:
  removed = checkpoint.remove_unfinished(workdir)
  if removed:
    log.info(
      f"Removed {len(removed)} unfinished save(s) that an interrupted run left in "
      f"{checkpoint.directory(workdir)}: {', '.join(removed)}."
    )


PICK_FAILED = -2  # What process 0 broadcasts when it could not pick a step (it raises the reason).


def _resume_together(
  workdir: str, initial: TrainState, check: Callable[[int, dict], None]
) -> tuple[int, TrainState, dict] | None:
  """`checkpoint.restore_newest` over several processes: process 0 alone removes unfinished saves,
  quarantines corrupt steps and picks the newest step that passes its checksums; then every process
  reads that step (Orbax restores collectively, so all must read the same step). A step that passes
  its checksums and still does not restore is an error here, not a fallback to an older one."""
  if distributed.is_writer():
    try:
      _remove_unfinished(workdir)
      step = checkpoint.latest_valid(workdir, quarantine=True)
    except UserError:
      distributed.broadcast(PICK_FAILED)  # The others stop too instead of waiting.
      raise
    step = distributed.broadcast(-1 if step is None else step)
  else:
    step = distributed.broadcast(0)
  if step == PICK_FAILED:
    raise CheckpointError(
      f"process 0 found no checkpoint to resume from in {checkpoint.directory(workdir)}; "
      "its output says why"
    )
  if step < 0:
    return None
  meta = checkpoint.read_meta(workdir, step)
  check(step, meta)
  state, meta = checkpoint.restore(workdir, step, initial)
  return step, state, meta


class _NoWriter:
  """The metrics sink of a process other than 0, which writes no file and no line."""

  def write(self, record: dict, timing: dict) -> None:
    pass

  def close(self) -> None:
    pass


class ProgressLog:
  """Progress lines for a log (where no progress bar is drawn): steps done (all seeds together),
  share done, steps/s and time left, every PROGRESS_SECONDS, to `logger` (this module's by
  default), each line starting with `prefix`."""

  def __init__(
    self, start: int, total: int, now: float, logger: logging.Logger = log, prefix: str = ""
  ):
    self.start, self.total, self.started, self.last = start, total, now, now
    self.done = start
    self.logger, self.prefix = logger, prefix

  def add(self, steps: int) -> None:
    self.done += steps
    step = self.done
    now = time.perf_counter()
    if now - self.last < PROGRESS_SECONDS:
      return
    self.last = now
    rate = (step - self.start) / (now - self.started)
    left = (self.total - step) / rate if rate else float("inf")
    self.logger.info(
      f"{self.prefix}step {step}/{self.total} ({100 * step / self.total:.0f}%), {rate:.1f} "
      f"steps/s, about {left / 60:.1f} min left"
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


class _Run:
  """One seed's run in the loop: its config, workdir, state and sinks."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, label: str):
    self.config, self.workdir, self.label = config, workdir, label
    self.diverged: TrainingDiverged | None = None
    self.record: dict = {}

  def start(self, plan: Plan) -> None:
    """Resumes (or starts) the run and opens its sinks."""
    self.state, meta = _resume(self.config, plan, self.workdir)
    self.step = int(self.state.step)
    if distributed.is_writer():
      with open(os.path.join(self.workdir, CONFIG_FILE), "w") as f:
        f.write(config_lib.to_json(self.config))
      metrics.truncate_after(self.workdir, self.step)
    spe, total = plan.steps_per_epoch, plan.total_steps
    restored = self.step if meta else None
    self.saver = Saver(self.workdir, self.config, spe, total, restored=restored)
    self.writer = (
      metrics.MetricWriter(self.workdir, self.label) if distributed.is_writer() else _NoWriter()
    )
    self.record = (metrics.read(self.workdir) or [{}])[-1]
    self.epoch_log = (
      EpochLog(meta["epoch_losses"], meta["epoch_accuracies"]) if meta else EpochLog()
    )

  def save_unless_saved(self, record: dict | None = None) -> None:
    """Saves the current step (at a stop request) unless it is saved already."""
    if self.saver.saved != self.step:
      self.epoch_log.flush()
      self.saver.save(self.step, self.state, self.epoch_log, record)

  def close(self) -> None:
    self.writer.close()
    self.saver.close(self.step)


def _train(
  plan: Plan,
  need: memory.Estimate,
  runs: list[_Run],
  stop: StopRequest,
  timing: LoopTiming | None = None,
  advance: Callable[[int], None] | None = None,
) -> None:
  config = runs[0].config  # The seeds' configs differ in the seed only.
  spe, total = plan.steps_per_epoch, plan.total_steps
  formulation = seeds_formulation(config.train.seeds_together, plan.devices[0].platform)
  log.info(
    f"{plan.dataset.name}: {plan.dataset.num_train} train / {plan.dataset.num_test} test "
    f"examples of shape {plan.dataset.shape}; batch {config.data.batch_size} -> {spe} "
    f"steps per epoch, {config.train.num_epochs} epochs -> {total} steps on {len(plan.devices)} "
    f"{plan.devices[0].platform} device(s)"
    + (f"; {len(runs)} seeds, their steps in one call ({formulation})." if len(runs) > 1 else ".")
  )
  have, where = memory.available(plan.devices)
  log.info(
    f"Memory per device, estimated from shapes: {need.describe()}"
    + (" per seed" if len(runs) > 1 else "")
    + (f"; {memory.size(have)} of {where}." if have is not None else f"; {where}.")
  )

  # ---------------------------------------------------------------------------------------------
  # Resume: each seed's newest valid checkpoint, or its initial state; its files follow it.
  for run in runs:
    run.start(plan)

  # ---------------------------------------------------------------------------------------------
  # Data, compiled steps and the sinks.
  loading = time.perf_counter()
  train, test = data.load(config)
  stats = data.normalizer(train, plan.dataset.pixel_max)
  log.info(f"Read {len(train)} train and {len(test)} test examples into memory in "
           f"{time.perf_counter() - loading:.1f} s (once per run).")  # fmt: skip
  replicated, _ = plan.shardings()
  by_batch = plan.sharding(None, "data")  # An epoch's indices: each device's share of each batch.
  # The normalized split, once: float32, 4 bytes a pixel (188 MiB for Fashion-MNIST).
  split = {"image": data.normalize(train.images, stats), "label": train.labels}
  on_device = jax.device_put(split, replicated)
  train_fn = jax.jit(
    # Looked up here, so that a test may replace either.
    parallel_steps if formulation == "unrolled" or len(runs) == 1 else vmapped_steps,
    in_shardings=(replicated, replicated, by_batch),
    out_shardings=replicated,
    donate_argnums=0,
  )
  evaluate = make_evaluator(plan, test, stats, config.data.eval_batch_size)
  if config.train.log_grad_norms:
    evaluate = _with_grad_norms(evaluate, plan, runs[0].state, on_device, config.data.batch_size)

  # ---------------------------------------------------------------------------------------------
  # The epoch loop, for each group of seeds that stand at the same step: from the checkpoint's
  # epoch, skipping the batches it had done.
  starts = sorted({run.step for run in runs})
  bar = tqdm.tqdm(
    total=total * len(runs),
    initial=sum(run.step for run in runs),
    unit="step",
    disable=True if advance is not None or not distributed.is_writer() else None,
    dynamic_ncols=True,
  )
  loop_started = time.perf_counter()
  done = sum(run.step for run in runs)
  if advance is None:
    progress = (
      ProgressLog(done, total * len(runs), loop_started)
      if bar.disable and distributed.is_writer()
      else None
    )

    def advance(n: int) -> None:
      bar.update(n)
      if progress is not None:
        progress.add(n)

  try:
    for start in starts:
      group = [run for run in runs if run.step == start]
      _train_group(plan, group, start, on_device, train_fn, evaluate, by_batch, stop, advance,
                   len(train), timing)  # fmt: skip
  finally:
    bar.close()
    for run in runs:
      run.close()

  # ---------------------------------------------------------------------------------------------
  # Finish.
  elapsed = time.perf_counter() - loop_started
  saves, blocked = sum(r.saver.saves for r in runs), sum(r.saver.blocked for r in runs)
  if saves:
    log.info(
      f"Checkpointing: {saves} saves blocked training for {blocked:.2f} s "
      f"of {elapsed:.2f} s ({100 * blocked / max(elapsed, 1e-9):.1f}%)."
    )
  for run in runs:
    if run.diverged is None:
      log.info(
        f"{run.label}Done: test_accuracy "
        f"{100 * run.record.get('test_accuracy', float('nan')):.2f}% after "
        f"{run.record.get('epoch', 0)} epochs. Results in {run.workdir} "
        f"(metrics.jsonl, tensorboard/, checkpoints/, {CONFIG_FILE})."
      )


def _with_grad_norms(evaluate, plan: Plan, state: TrainState, on_device: dict, batch_size: int):
  """`evaluate` that also gives `grad_norm/<layer>`: the norm of the loss gradient with respect to
  each layer's parameters (`training.state.grad_norms`, input to output), on a fixed probe batch,
  the first `batch_size` examples of the (normalized) training split."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  paths = tuple(layer_paths(plan.model, variables, (batch_size, *plan.dataset.shape)))
  probe = {"image": on_device["image"][:batch_size], "label": on_device["label"][:batch_size]}
  norms_fn = jax.jit(grad_norms, static_argnums=2)

  def evaluate_with_norms(state: TrainState) -> dict:
    norms = jax.device_get(norms_fn(state, probe, paths))
    return {
      **evaluate(state),
      **{f"grad_norm/{'/'.join(p)}": float(norms["/".join(p)]) for p in paths},
    }

  return evaluate_with_norms


def _train_group(
  plan: Plan,
  group: list[_Run],
  start: int,
  on_device: dict,
  train_fn,
  evaluate,
  by_batch,
  stop: StopRequest,
  advance: Callable[[int], None],
  num_train: int,
  timing: LoopTiming | None,
) -> None:
  """Trains the seeds of `group`, all at step `start`, to the end, in lockstep."""
  config = group[0].config
  spe, batch_size = plan.steps_per_epoch, config.data.batch_size

  def diverge(run: _Run, e: NonFinite) -> None:
    run.diverged = _diverged(e, run.saver, run.config)
    if len(group) > 1:  # A run of its own ends with this line as its error.
      log.error(f"{run.label}{run.diverged}")

  def stop_if_asked(step: int, records: dict | None = None) -> None:
    asked = stop.is_set()
    if distributed.several():  # All stop at the same step (saving is collective), so they agree.
      if step % spe and step % STOP_AGREEMENT_STEPS:
        return
      asked = distributed.any_process(asked)
    if not asked:
      return
    active = [r for r in group if r.diverged is None]
    for run in active:
      run.save_unless_saved((records or {}).get(run.workdir))
    where = ", ".join(checkpoint.directory(r.workdir) for r in active)
    raise Interrupted(
      f"stopped by {stop.signal or 'a stop request to another process'} at step {step} after "
      f"saving it in {where}; rerun the same command to resume"
    )

  step = start
  for epoch in range(start // spe, config.train.num_epochs):
    active = [r for r in group if r.diverged is None]
    if not active:
      return
    started = time.perf_counter()
    # Batches of this epoch done before a mid-epoch checkpoint; 0 otherwise.
    skip = step - epoch * spe
    orders = {}
    for run in active:
      if not skip:
        run.epoch_log = EpochLog()
      order = data.epoch_indices(num_train, batch_size, run.config.seed, epoch)
      # Each process feeds its own devices' share of every batch.
      orders[run.workdir] = distributed.global_array(order, by_batch)
    for _ in range(skip, spe):  # Each step takes the batch of its own step number.
      outputs = train_fn([r.state for r in active], on_device, [orders[r.workdir] for r in active])
      step += 1
      for run, (state, step_metrics) in zip(active, outputs):
        run.state, run.step = state, step
        try:
          run.epoch_log.add(step, step_metrics)
        except NonFinite as e:
          diverge(run, e)
      advance(len(active))
      active = [r for r in active if r.diverged is None]
      for run in active:
        run.saver.check(step)  # A save that failed in the background stops the run here.
        if step % spe and run.saver.due(step):  # The end of an epoch saves below.
          try:
            run.epoch_log.flush()
            run.saver.save(step, run.state, run.epoch_log)
          except NonFinite as e:
            diverge(run, e)
      active = [r for r in active if r.diverged is None]
      if not active:
        return
      if step % spe:
        stop_if_asked(step)

    # ---------------------------------------------------------------------------------------------
    # End of epoch: evaluate, write the metrics, save.
    for run in active:
      try:
        run.epoch_log.flush()
      except NonFinite as e:
        diverge(run, e)
    active = [r for r in active if r.diverged is None]
    train_seconds = time.perf_counter() - started
    blocked = sum(r.saver.blocked for r in active)
    records = {}
    for run in active:
      run.record = records[run.workdir] = {
        "step": step,
        "epoch": epoch + 1,
        **run.epoch_log.means(),
        **evaluate(run.state),
        "learning_rate": float(plan.schedule(step - 1)),
      }
      run.writer.write(
        run.record,
        {
          "epoch_seconds": time.perf_counter() - started,
          "train_examples_per_second": (spe - skip) * batch_size * len(active) / train_seconds,
        },
      )
      if run.saver.due(step):
        try:
          run.saver.save(step, run.state, run.epoch_log, run.record)
        except NonFinite as e:
          diverge(run, e)
    if timing is not None:
      blocked = sum(r.saver.blocked for r in active) - blocked
      timing.epochs.append(((spe - skip) * len(active), train_seconds + blocked))
    stop_if_asked(step, records)
