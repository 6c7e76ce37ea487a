"""The one place a config becomes objects: the dataset's shape, the model,
the optimizer and the devices.

`make_plan(config)` checks everything that can be wrong with a config before anything is read,
compiled or written (a `ConfigError` naming the key). Training, evaluation, `run.py cost` and
`run.py bench` all start from it.
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
from research.data import pipeline as data
from research.nn.models import build_model
from research.training import distributed
from research.training.optim import build_optimizer
from research.training.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config makes of the dataset, model and optimizer;
  built before anything is read or written."""

  dataset: data.DatasetInfo
  model: nn.Module
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule  # Step (from 0) -> learning rate.
  devices: tuple

  def shardings(self) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the batch axis) over all devices (of every process), on a `data`
    mesh axis."""
    return self.sharding(), self.sharding("data")

  def sharding(self, *spec) -> NamedSharding:
    """`NamedSharding` of `PartitionSpec(*spec)` on the plan's `data` mesh axis."""
    return NamedSharding(Mesh(np.array(self.devices), ("data",)), P(*spec))

  def initial_state(self, seed: int) -> TrainState:
    """The state before the first step, a function of `seed` only, replicated over the devices."""
    state = create_train_state(self.model, self.tx, seed, self.dataset.shape)
    replicated = self.shardings()[0]
    if distributed.several():  # Each process puts its own devices' copies of the same values.
      return jax.tree.map(lambda x: distributed.global_array(np.asarray(x), replicated), state)
    return jax.device_put(state, replicated)


def make_plan(config: ml_collections.ConfigDict, static: bool = False) -> Plan:
  """Checks everything that can be wrong with `config` (a `ConfigError` naming the key) and plans
  the run.

  With `static`, the dataset is described by its builder's static metadata only (nothing is
  prepared or read: enough for `run.py cost` and `bench`); where its size is then unknown, an epoch
  counts as one step for the learning-rate schedule.
  """
  config_lib.validate(config)
  dataset = data.static_info(config) if static else data.info(config)
  devices = tuple(jax.devices())  # Every process's (`training.distributed`); in one, its own.
  data.check(config, dataset, len(devices))
  model = build_model(config.model, dataset.num_classes, dataset.shape)
  steps_per_epoch = (
    1
    if dataset.num_train is None
    else data.steps_per_epoch(dataset.num_train, config.data.batch_size)
  )
  total_steps = steps_per_epoch * config.train.num_epochs
  tx, schedule = build_optimizer(config, total_steps, steps_per_epoch)
  return Plan(dataset, model, steps_per_epoch, total_steps, tx, schedule, devices)
