"""One training run: `train_and_evaluate(config, workdir)`, with pure, jitted `train_step` and `eval_step`.

Data-parallel over all local devices: the batch is split along a `data` mesh axis and the state is
replicated; XLA inserts the gradient all-reduce. The same code runs on CPU, GPU and TPU.
"""

import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research import checkpoint, config as config_lib, data, metrics
from research.errors import UserError
from research.models import build_model
from research.optim import build_optimizer


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from flax), plus BatchNorm statistics (`{}` without BatchNorm)."""

  batch_stats: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                       input_shape: tuple[int, ...]) -> TrainState:
  """The initial state; parameters depend on `seed` only."""
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1,) + tuple(input_shape)), train=False))(
      jax.random.PRNGKey(seed))
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` (`image` `[b, h, w, c]`, `label` `[b]`); returns the mean loss and accuracy."""

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                     train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates per epoch, checkpointing into `workdir`; resumes if it holds a checkpoint.

  Returns the last metrics record (see `research.metrics`).
  """
  # Everything that can be wrong with the config is found before anything is written or compiled.
  config_lib.validate(config)
  dataset = data.info(config)
  devices = jax.local_devices()
  data.check(config, dataset, len(devices))
  model = build_model(config.model, dataset.num_classes, dataset.shape)
  steps_per_epoch = data.steps_per_epoch(dataset.num_train, config.data.batch_size)
  total_steps = steps_per_epoch * config.train.num_epochs
  tx, schedule = build_optimizer(config, total_steps, steps_per_epoch)

  workdir = prepare_workdir(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  print(f"{dataset.name}: {dataset.num_train} train / {dataset.num_test} test examples of shape {dataset.shape}; "
        f"batch {config.data.batch_size} -> {steps_per_epoch} steps per epoch, {config.train.num_epochs} epochs "
        f"-> {total_steps} steps on {len(devices)} {devices[0].platform} device(s).", flush=True)

  train, test = data.load(config)
  stats = data.normalizer(train, dataset.pixel_max)
  mesh = Mesh(np.array(devices), ("data",))
  replicated, split_batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put(create_train_state(model, tx, config.seed, dataset.shape), replicated)

  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
  start_epoch = 0
  restored = checkpoint.restore_latest(manager, state)
  if restored is not None:
    state, meta = restored
    start_epoch = meta["epoch"]
    metrics.truncate_after(workdir, int(state.step))
    print(f"Resuming from the checkpoint at step {int(state.step)} (epoch {start_epoch}) in "
          f"{manager.directory}.", flush=True)

  train_fn = jax.jit(train_step, in_shardings=(replicated, split_batch), out_shardings=(replicated, replicated),
                     donate_argnums=0)
  eval_fn = jax.jit(eval_step, in_shardings=(replicated, split_batch), out_shardings=replicated)
  writer = metrics.MetricWriter(workdir)
  record = (metrics.read(workdir) or [{}])[-1]
  bar = tqdm.tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, unit="step", disable=None,
                  dynamic_ncols=True)
  try:
    for epoch in range(start_epoch, config.train.num_epochs):
      started = time.perf_counter()
      step_metrics = []
      for batch in data.train_batches(train, stats, config.data.batch_size, config.seed, epoch):
        state, m = train_fn(state, jax.device_put(batch, split_batch))
        step_metrics.append(m)
        bar.update()
      step_metrics = jax.device_get(step_metrics)
      train_seconds = time.perf_counter() - started
      step = int(state.step)
      record = {"step": step, "epoch": epoch + 1,
                "train_loss": float(np.mean([m["loss"] for m in step_metrics])),
                "train_accuracy": float(np.mean([m["accuracy"] for m in step_metrics])),
                **evaluate(state, eval_fn, test, stats, config.data.eval_batch_size, split_batch),
                "learning_rate": float(schedule(step - 1))}
      writer.write(record, {"epoch_seconds": time.perf_counter() - started,
                            "train_examples_per_second": steps_per_epoch * config.data.batch_size / train_seconds},
                   log=bar.write)
      if (epoch + 1) % config.train.checkpoint_every_epochs == 0 or epoch + 1 == config.train.num_epochs:
        checkpoint.save(manager, step, state, {"epoch": epoch + 1, "config": config.to_dict()})
  finally:
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()
  print(f"Done: test_accuracy {100 * record.get('test_accuracy', float('nan')):.2f}% after "
        f"{record.get('epoch', 0)} epochs. Results in {workdir} (metrics.jsonl, tensorboard/, checkpoints/, "
        "config.json).", flush=True)
  return record
