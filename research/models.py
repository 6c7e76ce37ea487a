"""Models by name. Each takes `[batch, height, width, channels]` floats and returns logits `[batch, classes]`.

`build_model(config.model, num_classes)` is the one place a model config becomes a module: every key of
`config.model` other than `name` is a field of the chosen module.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from research.errors import ConfigError
from research.registry import Registry

MODELS = Registry("model")


@MODELS.register("cnn")
class CNN(nn.Module):
  """The Flax MNIST example's CNN: [conv 3x3 -> relu -> avg-pool 2x2] per width, then dense -> dense."""

  num_classes: int
  widths: Sequence[int] = (32, 64)
  hidden: int = 256

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for width in self.widths:
      x = nn.Conv(width, (3, 3))(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


def build_model(config: ml_collections.ConfigDict, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
  """The module named by `config.name`, with the other keys of `config` as its fields.

  `input_shape` is one example's `[height, width, channels]`; impossible configurations for it raise
  `ConfigError` here, before anything is compiled.
  """
  cls = MODELS.lookup(config.name, "model.name")
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
  kwargs = {k: v for k, v in config.items() if k != "name"}
  for key in kwargs:
    if key not in fields:
      raise ConfigError(f"model.{key}", f"model {config.name!r} has no such field; it has: {', '.join(sorted(fields))}")
  return cls(num_classes=num_classes, **kwargs)
