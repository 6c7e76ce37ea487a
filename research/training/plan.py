"""The one place a config becomes objects: the dataset's shape and size, the model, the optimizer,
the batch sizes, the steps and the devices.

`make_plan(config)` checks everything that can be wrong with a config before anything is read,
compiled or written (a `ConfigError` naming the key), and is built once per run: training,
evaluation, `run.py cost` and `run.py bench` all start from it, and nothing downstream rereads the
raw config for what it carries.
"""

import dataclasses

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import config as config_lib
from research.data import batches, splits
from research.nn.models import build_model
from research.training import distributed, memory
from research.training.optim import build_optimizer
from research.training.state import TrainState, create_train_state, seeds_formulation


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config makes of the dataset, model and optimizer; built before anything is read or
  written.

  `batch_size` and `eval_batch_size` are global (over all devices), in examples; `need` is the
  memory one device needs for one seed's training step (None for a static plan, which checks no
  memory); `seeds_together` the formulation several seeds train in (`unrolled` or `vmap`).
  """

  dataset: splits.DatasetInfo
  model: nn.Module
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule  # Step (from 0) -> learning rate.
  devices: tuple
  batch_size: int
  eval_batch_size: int
  num_epochs: int
  seeds_together: str
  need: memory.Estimate | None = None

  def shardings(self) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the batch axis) over all devices (of every process), on a `data`
    mesh axis."""
    return self.sharding(), self.sharding("data")

  def sharding(self, *spec) -> NamedSharding:
    """`NamedSharding` of `PartitionSpec(*spec)` on the plan's `data` mesh axis."""
    return NamedSharding(Mesh(np.array(self.devices), ("data",)), P(*spec))

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and (replicated) shardings, computed from shapes alone: what a
    checkpoint restores onto."""
    replicated = self.sharding()
    shapes = jax.eval_shape(lambda: create_train_state(self.model, self.tx, 0, self.dataset.shape))
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
    )

  def initial_state(self, seed: int) -> TrainState:
    """The state before the first step, a function of `seed` only, replicated over the devices."""
    state = create_train_state(self.model, self.tx, seed, self.dataset.shape)
    replicated = self.sharding()
    if distributed.several():  # Each process puts its own devices' copies of the same values.
      return jax.tree.map(lambda x: distributed.global_array(np.asarray(x), replicated), state)
    return jax.device_put(state, replicated)


def make_plan(config: ml_collections.ConfigDict, static: bool = False, seeds: int = 1) -> Plan:
  """Checks everything that can be wrong with `config` (a `ConfigError` naming the key) and plans
  the run.

  The model is built once, from the dataset's static metadata. Unless `static`, the memory `seeds`
  seeds trained together need is checked against the devices' (`training.memory`) before the
  dataset is prepared, then its sizes are read. With `static`, nothing is prepared or read (enough
  for `run.py cost` and `bench`); where the dataset's size is then unknown, an epoch counts as one
  step for the learning-rate schedule.
  """
  config_lib.validate(config)
  known = splits.static_info(config)
  devices = tuple(jax.devices())  # Every process's (`training.distributed`); in one, its own.
  batches.check(config, known, len(devices))
  model = build_model(config.model, known.num_classes, known.shape)
  plan = _with_sizes(config, known, model, devices)
  if static:
    return plan
  need = memory.check(plan, plan.batch_size, seeds)  # Refused from shapes, before preparing.
  dataset = splits.info(config)
  batches.check(config, dataset, len(devices))
  return dataclasses.replace(_with_sizes(config, dataset, model, devices), need=need)


def _with_sizes(
  config: ml_collections.ConfigDict, dataset: splits.DatasetInfo, model: nn.Module, devices: tuple
) -> Plan:
  """The plan of `model` on `dataset`: steps, optimizer and schedule from its size."""
  batch_size = config.data.batch_size
  steps_per_epoch = (
    1 if dataset.num_train is None else batches.steps_per_epoch(dataset.num_train, batch_size)
  )
  total_steps = steps_per_epoch * config.train.num_epochs
  tx, schedule = build_optimizer(config, total_steps, steps_per_epoch)
  return Plan(
    dataset=dataset,
    model=model,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    tx=tx,
    schedule=schedule,
    devices=devices,
    batch_size=batch_size,
    eval_batch_size=config.data.eval_batch_size,
    num_epochs=config.train.num_epochs,
    seeds_together=seeds_formulation(config.train.seeds_together, devices[0].platform),
  )
