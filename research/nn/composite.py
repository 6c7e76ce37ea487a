"""Composite blocks: ResNet's residual block and the Inception module, built of a block callable.

Each takes its KxK convolution as `block` (a `blocks.ModuleDef`: any block of `blocks.BLOCKS`, with
the model's window, activation, norm and lowering bound), so the block a model is given replaces
every KxK convolution inside them too. The 1x1 layers they add themselves (projections,
reductions) are `blocks.Pointwise` with their own `activation` and `norm`.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from research.nn import shapes
from research.nn.activations import Activation, identity
from research.nn.blocks import ConvBlock, ModuleDef, Pointwise


class ResidualBlock(nn.Module):
  """ResNet's basic block, `[b, *s, c_in]` -> `[b, *s', features]`: block (`strides`) -> block
  (no activation), added to the input (through a strided 1x1 projection with `norm` where the
  shapes differ) -> activation."""

  features: int
  block: ModuleDef = ConvBlock  # Called as `block(features, strides=...)`.
  strides: int = 1
  activation: Activation = nn.relu
  norm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    y = self.block(features=self.features, strides=self.strides)(x, train)
    y = self.block(features=self.features, activation=identity)(y, train)
    if x.shape != y.shape:
      x = Pointwise(self.features, strides=self.strides, activation=identity, norm=self.norm)(
        x, train
      )
    return self.activation(x + y)


class InceptionModule(nn.Module):
  """Four parallel branches concatenated, `[b, *s, c_in]` -> `[b, *s, features]` (a quarter each):
  1x1; 1x1 -> KxK; 1x1 -> KxK -> KxK (Inception-v3's two 3x3 in place of a 5x5); 3x3 max-pool ->
  1x1. The 1x1 reductions before the KxK blocks have `features // 8` channels; every 1x1 has
  `activation` and `norm`."""

  features: int
  block: ModuleDef = ConvBlock  # Called as `block(features)`.
  activation: Activation = nn.relu
  norm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.features % 8:
      raise shapes.ShapeError(
        "widths", f"an Inception module's width must be a multiple of 8, got {self.features}"
      )
    quarter, eighth = self.features // 4, self.features // 8
    one_by_one = functools.partial(Pointwise, activation=self.activation, norm=self.norm)
    # Flax names a sub-module (`ConvBlock_1`, `Pointwise_2`) when it is constructed: the order of
    # construction below fixes the parameter paths, which saved runs and results depend on.
    one = one_by_one(quarter)(x, train)
    two = self.block(quarter)(one_by_one(eighth)(x, train), train)
    three = one_by_one(eighth)(x, train)
    three = self.block(quarter)(self.block(quarter)(three, train), train)
    pool = nn.max_pool(x, (3,) * (x.ndim - 2), padding="SAME")
    four = one_by_one(quarter)(pool, train)
    return jnp.concatenate([one, two, three, four], axis=-1)
