"""Classification heads by name: features `[batch, *spatial, channels]` -> logits
`[batch, num_classes]`.

Parameter counts (C channels, S pixels of the feature map, H hidden units, N classes):
  dense  S C H + H + H N + N
  gap    C N + N
"""

import flax.linen as nn
import jax.numpy as jnp

from research.nn.activations import Activation
from research.nn.blocks import Conv


class DenseHead(nn.Module):
  """Flatten -> dense `hidden` -> activation -> dense `num_classes`: `[b, *s, c]`
  -> logits `[b, num_classes]`."""

  num_classes: int
  hidden: int = 256
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    x = self.activation(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


class GAPHead(nn.Module):
  """Network-in-Network head: 1x1 conv to `num_classes` -> global average pool: `[b, *s, c]`
  -> `[b, classes]`.

  Both steps are linear, so this equals ResNet's global-average-pool
  -> dense with the same parameters.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = Conv(self.num_classes, 1, padding="VALID")(x)
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


HEADS: dict[str, type[nn.Module]] = {"dense": DenseHead, "gap": GAPHead}
