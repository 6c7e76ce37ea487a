"""One training run: `train_and_evaluate(config, workdir)`, with pure, jitted `train_step` and `eval_step`.

Data-parallel over all local devices: the batch is split along a `data` mesh axis and the state is
replicated; XLA inserts the gradient all-reduce. The same code runs on CPU, GPU and TPU.

Crash safety: a run holds `<workdir>/run.lock`, saves asynchronously under the `config.train` policy and resumes
from the newest valid checkpoint, mid-epoch included: killed at any point and rerun, it ends with the parameters of
an uninterrupted run, bit for bit. SIGTERM saves and stops; a non-finite loss stops without saving.
"""

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research import checkpoint, config as config_lib, data, faults, lock, metrics
from research.errors import CheckpointError, Interrupted, TrainingDiverged, UserError
from research.models import build_model
from research.optim import build_optimizer

CONFIG_CHANGES_FILE = "config_changes.jsonl"


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from flax), BatchNorm statistics and the RNG key.

  `batch_stats` is `{}` without BatchNorm; `rng` is a raw `uint32[2]` key that each step's randomness (dropout)
  is split from.
  """

  batch_stats: Any
  rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                       input_shape: tuple[int, ...]) -> TrainState:
  """The initial state, a function of `seed` only: parameters from `PRNGKey(seed)`, the step key folded off it."""

  def init(key):
    variables = model.init(key, jnp.zeros((1,) + tuple(input_shape)), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=jax.random.fold_in(key, 1))

  return jax.jit(init)(jax.random.PRNGKey(seed))  # One compilation, not one per optimizer-state leaf.


def all_finite(tree: Any) -> bool:
  """Whether every floating-point value in `tree` is finite; checked before each save.

  Outside `train_step`, which stays the bare step that `research.cost` measures. Arrays on CPU already are host
  memory, so NumPy checks them in well under a millisecond (a compiled check costs a compilation per process);
  on accelerators a compiled reduction spares copying the state to the host.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if all(device.platform == "cpu" for x in leaves for device in x.devices()):
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
  return bool(_all_finite_on_device(leaves))


@jax.jit
def _all_finite_on_device(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` (`image` `[b, h, w, c]`, `label` `[b]`); returns the mean loss and accuracy."""
  rng, dropout = jax.random.split(state.rng)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                     train=True, mutable=["batch_stats"], rngs={"dropout": dropout})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats), rng=rng)
  return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def eval_step(state: TrainState, batch: dict) -> dict:
  """Sums over the real (`mask` = 1) examples of `batch`: `loss`, `correct` and `count`."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = jnp.argmax(logits, -1) == batch["label"]
  mask = batch["mask"]
  return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def evaluate(state: TrainState, eval_fn, test: data.Split, stats, batch_size: int, sharding) -> dict:
  """Mean loss and accuracy over every test example exactly once."""
  totals = None
  for batch in data.eval_batches(test, stats, batch_size):
    sums = eval_fn(state, jax.device_put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {"test_loss": float(totals["loss"] / totals["count"]),
          "test_accuracy": float(totals["correct"] / totals["count"])}


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config makes of the dataset, model and optimizer; built before anything is read or written."""

  dataset: data.DatasetInfo
  model: nn.Module
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  devices: tuple

  def shardings(self) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the batch axis) over all devices."""
    mesh = Mesh(np.array(self.devices), ("data",))
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def initial_state(self, seed: int) -> TrainState:
    return jax.device_put(create_train_state(self.model, self.tx, seed, self.dataset.shape), self.shardings()[0])


def make_plan(config: ml_collections.ConfigDict) -> Plan:
  """Checks everything that can be wrong with `config` (a `ConfigError` naming the key) and plans the run."""
  config_lib.validate(config)
  dataset = data.info(config)
  devices = tuple(jax.local_devices())
  data.check(config, dataset, len(devices))
  model = build_model(config.model, dataset.num_classes, dataset.shape)
  steps_per_epoch = data.steps_per_epoch(dataset.num_train, config.data.batch_size)
  total_steps = steps_per_epoch * config.train.num_epochs
  tx, schedule = build_optimizer(config, total_steps, steps_per_epoch)
  return Plan(dataset, model, steps_per_epoch, total_steps, tx, schedule, devices)


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
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); choose another with --workdir") from None
  return workdir


def _log(message: str) -> None:
  print(message, flush=True)


def resumable(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The newest valid checkpoint step in `workdir` that `config` may continue, or None for a fresh start.

  Removes unfinished saves, quarantines corrupt newer steps, and refuses config changes the checkpoint cannot
  continue under; allowed changes are printed and appended to `<workdir>/config_changes.jsonl`.
  """
  removed = checkpoint.remove_unfinished(workdir)
  if removed:
    _log(f"Removed {len(removed)} unfinished save(s) that an interrupted run left in "
         f"{checkpoint.directory(workdir)}: {', '.join(removed)}.")
  step = checkpoint.latest_valid(workdir, quarantine=True, log=_log)
  if step is None:
    return None
  meta = checkpoint.read_meta(workdir, step)
  changes = checkpoint.config_changes(meta["config"], json.loads(config_lib.to_json(config)))
  checkpoint.check_resumable(changes, os.path.join(checkpoint.directory(workdir), str(step)))
  if changes:
    _log(f"Config changes since step {step} (allowed; recorded in {CONFIG_CHANGES_FILE}): "
         + ", ".join(f"config.{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()) + ".")
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
      f.write(json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
  return step


class _NonFinite(Exception):
  """Raised inside the loop; the loop turns it into `TrainingDiverged` with the checkpoint context."""

  def __init__(self, step: int, what: str):
    super().__init__(what)
    self.step, self.what = step, what


class _EpochLog:
  """Per-step loss and accuracy of the current epoch, read one step late so that the device never waits."""

  def __init__(self, losses=(), accuracies=()):
    self.losses, self.accuracies = list(losses), list(accuracies)
    self._pending = None

  def add(self, step: int, step_metrics: dict) -> None:
    self.flush()
    self._pending = (step, step_metrics)

  def flush(self) -> None:
    """Reads the pending step's metrics; a non-finite loss raises `_NonFinite`."""
    if self._pending is not None:
      step, m = self._pending
      self._pending = None
      m = jax.device_get(m)
      if not math.isfinite(m["loss"]):
        raise _NonFinite(step, f"the loss is {float(m['loss'])}")
      self.losses.append(float(m["loss"]))
      self.accuracies.append(float(m["accuracy"]))


@contextlib.contextmanager
def _sigterm_event() -> Iterator[threading.Event]:
  """An event that SIGTERM sets inside the `with` (signals reach only the main thread; elsewhere it never does)."""
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield event
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
  try:
    yield event
  finally:
    signal.signal(signal.SIGTERM, previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates per epoch, checkpointing into `workdir`; resumes if it holds a checkpoint.

  Returns the last metrics record (see `research.metrics`).
  """
  plan = make_plan(config)  # Everything that can be wrong with the config is found before anything is written.
  workdir = prepare_workdir(workdir)
  with lock.hold(workdir, log=_log), _sigterm_event() as sigterm:
    return _train(config, plan, workdir, sigterm)


def _train(config: ml_collections.ConfigDict, plan: Plan, workdir: str, sigterm: threading.Event) -> dict:
  spe, total, policy = plan.steps_per_epoch, plan.total_steps, config.train
  _log(f"{plan.dataset.name}: {plan.dataset.num_train} train / {plan.dataset.num_test} test examples of shape "
       f"{plan.dataset.shape}; batch {config.data.batch_size} -> {spe} steps per epoch, {policy.num_epochs} epochs "
       f"-> {total} steps on {len(plan.devices)} {plan.devices[0].platform} device(s).")
  resume_step = resumable(config, workdir)
  state, meta = plan.initial_state(config.seed), None
  if resume_step is not None:
    state, meta = checkpoint.restore(workdir, resume_step, target=state)
    if meta["steps_per_epoch"] != spe:  # The data position would mean other examples.
      raise CheckpointError(f"checkpoint {resume_step} in {checkpoint.directory(workdir)} was saved with "
                            f"{meta['steps_per_epoch']} steps per epoch and this run has {spe}: the dataset "
                            "changed size; train into a new --workdir")
  start = int(state.step)
  if meta is not None:
    position = f", step {start % spe} of {spe}" if start % spe else ""
    _log(f"Resuming from the checkpoint at step {start} (epoch {start // spe}{position}) in "
         f"{checkpoint.directory(workdir)}.")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  metrics.truncate_after(workdir, start)

  train, test = data.load(config)
  stats = data.normalizer(train, plan.dataset.pixel_max)
  replicated, split_batch = plan.shardings()
  train_fn = jax.jit(train_step, in_shardings=(replicated, split_batch), out_shardings=(replicated, replicated),
                     donate_argnums=0)
  eval_fn = jax.jit(eval_step, in_shardings=(replicated, split_batch), out_shardings=replicated)
  config_json = json.loads(config_lib.to_json(config))
  manager = checkpoint.make_manager(workdir, policy)
  writer = metrics.MetricWriter(workdir)
  record = (metrics.read(workdir) or [{}])[-1]
  epoch_log = _EpochLog(meta["epoch_losses"], meta["epoch_accuracies"]) if meta else _EpochLog()
  saved = start if meta else None  # The newest step saved or restored.
  step, blocked, saves = start, 0.0, 0  # Seconds the loop spent blocked by checkpointing, and saves made.

  def save(step: int, record: dict | None = None) -> None:
    nonlocal saved, blocked, saves
    started = time.perf_counter()  # Every loss up to `step` was checked by `epoch_log.flush()`; now the state.
    if not all_finite((state.params, state.opt_state, state.batch_stats)):
      raise _NonFinite(step, "the parameters or optimizer state are not finite")
    mid_epoch = step % spe != 0
    checkpoint.save(manager, step, state, {  # Copies: the save serializes them after it returns.
        "step": step, "epoch": step // spe, "batch_in_epoch": step % spe, "steps_per_epoch": spe,
        "epoch_losses": list(epoch_log.losses) if mid_epoch else [],
        "epoch_accuracies": list(epoch_log.accuracies) if mid_epoch else [],
        "metrics": record, "config": config_json}, metrics=record)
    saved, saves = step, saves + 1
    blocked += time.perf_counter() - started

  def stop_if_asked(step: int, record: dict | None = None) -> None:
    if sigterm.is_set():
      if saved != step:
        epoch_log.flush()
        save(step, record)
      raise Interrupted(f"stopped by SIGTERM at step {step} after saving it in {checkpoint.directory(workdir)}; "
                        "rerun the same command to resume")

  bar = tqdm.tqdm(total=total, initial=start, unit="step", disable=None, dynamic_ncols=True)
  loop_started = time.perf_counter()
  try:
    for epoch in range(start // spe, policy.num_epochs):
      started = time.perf_counter()
      skip = step - epoch * spe  # Batches of this epoch done before a mid-epoch checkpoint; 0 otherwise.
      if not skip:
        epoch_log = _EpochLog()
      for batch in itertools.islice(data.train_batches(train, stats, config.data.batch_size, config.seed, epoch),
                                    skip, None):
        state, m = train_fn(state, jax.device_put(batch, split_batch))
        step += 1
        faults.inject("step", step, settle=manager.wait_until_finished)
        epoch_log.add(step, m)
        bar.update()
        if step % spe:  # The end of an epoch saves and stops below, after its evaluation.
          if checkpoint.due(step, spe, total, policy.checkpoint_every_steps, policy.checkpoint_every_epochs):
            epoch_log.flush()
            save(step)
          stop_if_asked(step)
      epoch_log.flush()
      train_seconds = time.perf_counter() - started
      record = {"step": step, "epoch": epoch + 1,
                "train_loss": float(np.mean(np.asarray(epoch_log.losses, np.float32))),
                "train_accuracy": float(np.mean(np.asarray(epoch_log.accuracies, np.float32))),
                **evaluate(state, eval_fn, test, stats, config.data.eval_batch_size, split_batch),
                "learning_rate": float(plan.schedule(step - 1))}
      writer.write(record, {"epoch_seconds": time.perf_counter() - started,
                            "train_examples_per_second": (spe - skip) * config.data.batch_size / train_seconds},
                   log=bar.write)
      if checkpoint.due(step, spe, total, policy.checkpoint_every_steps, policy.checkpoint_every_epochs):
        save(step, record)
      stop_if_asked(step, record)
  except _NonFinite as e:
    last = (f"the latest checkpoint, step {saved} in {checkpoint.directory(workdir)}, is the last good one and stays "
            "the latest" if saved is not None else "no checkpoint was saved before it")
    raise TrainingDiverged(
        f"training diverged: {e.what} at step {e.step} (epoch {(e.step - 1) // spe + 1}); stopped without saving, "
        f"and {last}. Lower config.optimizer.learning_rate (now {config.optimizer.learning_rate}) or change what "
        "made it diverge, then rerun to continue from there.") from None
  finally:
    bar.close()
    writer.close()
    waited = time.perf_counter()
    manager.wait_until_finished()  # An async save still writing must not be cut short by the exit.
    manager.close()
    blocked += time.perf_counter() - waited
  elapsed = time.perf_counter() - loop_started
  if saves:
    _log(f"Checkpointing: {saves} saves blocked training for {blocked:.2f} s of {elapsed:.2f} s "
         f"({100 * blocked / max(elapsed, 1e-9):.1f}%).")
  _log(f"Done: test_accuracy {100 * record.get('test_accuracy', float('nan')):.2f}% after "
       f"{record.get('epoch', 0)} epochs. Results in {workdir} (metrics.jsonl, tensorboard/, checkpoints/, "
       "config.json).")
  return record
