"""Models by name, assembled from block callables. Each maps `[batch, *spatial, channels]` floats to
logits `[batch, num_classes]`, in 1, 2 or 3 spatial dimensions.

A model takes callables as fields, as Flax's imagenet example does: `block` (a `blocks.ModuleDef`,
called as `block(features, strides=...)` for every KxK convolution), optionally `stage_blocks`
(one per width, where the block differs by stage; the stem belongs to the first) and `head`
(`head(num_classes)`). So one value swaps every KxK convolution of a model for another block.

Names exist only at the config edge. `build_model(config.model, num_classes, input_shape)` is the
one place a model config becomes a module: it looks each name up once (`model.block`,
`model.stage_blocks`, `model.activation`, `model.head`) and binds the settings the config gives
(`kernel_size`, `padding`, `activation` with leaky_relu's `negative_slope`, `norm`, `lowering`,
the bottleneck's `reduction`, the dense head's `hidden`) into each callable that has them. It
rejects an unknown or impossible configuration with a `ConfigError` naming the key, by tracing the
shapes (`jax.eval_shape`, no compilation).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.config import is_int
from research.errors import ConfigError
from research.nn import activations, conv, shapes
from research.nn.activations import Activation
from research.nn.blocks import BLOCKS, ConvBlock, ModuleDef, fields
from research.nn.composite import InceptionModule, ResidualBlock
from research.nn.heads import HEADS, DenseHead, GAPHead
from research.registry import lookup


class Network(nn.Module):
  """The fields every model has: its classes and the callables it is built of."""

  num_classes: int
  block: ModuleDef = ConvBlock
  stage_blocks: Sequence[ModuleDef] = ()  # One block per width; empty: `block` everywhere.
  head: ModuleDef = DenseHead

  def stage_block(self, stage: int) -> ModuleDef:
    """The block of stage `stage`: its `stage_blocks` entry where they are given, else `block`."""
    if self.stage_blocks and len(self.stage_blocks) != len(self.widths):
      raise shapes.ShapeError(
        "stage_blocks",
        f"stage_blocks has {len(self.stage_blocks)} blocks; it needs one block per width "
        f"{tuple(self.widths)}",
      )
    return self.stage_blocks[stage] if self.stage_blocks else self.block


def _pool(
  x: jnp.ndarray, kind: str, window: int, strides: int, padding: str = "VALID"
) -> jnp.ndarray:
  spatial = x.shape[1:-1]
  try:
    shapes.conv_output_shape(spatial, window, strides, padding)
  except shapes.ShapeError:
    raise shapes.ShapeError(
      "widths",
      f"the feature map has shrunk to {'x'.join(map(str, spatial))}, too small "
      f"for {window}x{window} pooling; use fewer stages (widths) or SAME padding",
    ) from None
  pool = nn.avg_pool if kind == "avg" else nn.max_pool
  return pool(x, (window,) * len(spatial), strides=(strides,) * len(spatial), padding=padding)


class CNN(Network):
  """The Flax MNIST example's CNN: [block `width` -> avg-pool 2x2] per width, then the head (dense
  256 -> dense by default). With the defaults it is exactly that example's model."""

  widths: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage, width in enumerate(self.widths):
      x = self.stage_block(stage)(width)(x, train)
      x = _pool(x, "avg", 2, 2)
    return self.head(self.num_classes)(x)


class Plain(Network):
  """A plain deep stack, no residual connections: one KxK block per width, a 2x2 average pool after
  every `pool_every` blocks (not after the last), then the head. With no normalization (the
  default), the activations ablation's model: gradients must pass through every activation."""

  widths: Sequence[int] = (16,) * 8
  pool_every: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage, width in enumerate(self.widths):
      x = self.stage_block(stage)(width)(x, train)
      if (stage + 1) % self.pool_every == 0 and stage + 1 < len(self.widths):
        x = _pool(x, "avg", 2, 2)
    return self.head(self.num_classes)(x)


class ResNet(Network):
  """A small ResNet: stem block `widths[0]` -> stages of `stage_sizes[i]` residual blocks of
  `widths[i]` (stride 2 entering every stage but the first) -> head (global average pool + linear
  by default). `activation` follows each residual sum; `norm` is the projections'."""

  block: ModuleDef = functools.partial(ConvBlock, norm=True)
  head: ModuleDef = GAPHead
  widths: Sequence[int] = (16, 32)
  stage_sizes: Sequence[int] = (2, 2)
  activation: Activation = nn.relu
  norm: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if len(self.stage_sizes) != len(self.widths):
      raise shapes.ShapeError(
        "stage_sizes",
        f"stage_sizes {tuple(self.stage_sizes)} needs one entry per width {tuple(self.widths)}",
      )
    x = self.stage_block(0)(self.widths[0])(x, train)
    for i, (width, size) in enumerate(zip(self.widths, self.stage_sizes)):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = ResidualBlock(width, self.stage_block(i), strides, self.activation, self.norm)(x, train)
    return self.head(self.num_classes)(x)


class Inception(Network):
  """A small Inception network: stem block `stem_width` -> [Inception module `width` -> 2x2
  max-pool between modules] per width -> head (global average pool + linear by default).
  `activation` and `norm` are the modules' 1x1 layers'."""

  block: ModuleDef = functools.partial(ConvBlock, norm=True)
  head: ModuleDef = GAPHead
  widths: Sequence[int] = (32, 64)
  stem_width: int = 32
  activation: Activation = nn.relu
  norm: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = self.stage_block(0)(self.stem_width)(x, train)
    for i, width in enumerate(self.widths):
      if i:
        x = _pool(x, "max", 2, 2)
      x = InceptionModule(width, self.stage_block(i), self.activation, self.norm)(x, train)
    return self.head(self.num_classes)(x)


MODELS: dict[str, type[Network]] = {
  "cnn": CNN,
  "plain": Plain,
  "resnet": ResNet,
  "inception": Inception,
}

# The config keys every model takes (what its callables are, and their settings), with the values
# a config that leaves them out gets; `MODEL_DEFAULTS` where a model's differ. A model's other keys
# are its own fields (`widths`, `stage_sizes`, ...), with the class's defaults.
CONFIG_DEFAULTS = {
  "block": "conv",
  "stage_blocks": (),
  "kernel_size": 3,
  "padding": "SAME",
  "activation": "relu",
  "negative_slope": 0.01,
  "norm": False,
  "head": "dense",
  "hidden": 256,
  "lowering": "native",
  "reduction": 4,
}
MODEL_DEFAULTS = {
  "resnet": {"norm": True, "head": "gap"},
  "inception": {"norm": True, "head": "gap"},
}


def bind(cls: type[nn.Module], **settings: Any) -> ModuleDef:
  """`cls` with those of `settings` it has as fields bound (a 1x1 block has no `kernel_size`)."""
  own = fields(cls)
  return functools.partial(cls, **{k: v for k, v in settings.items() if k in own})


def _check_values(name: str, values: dict) -> None:
  """Every integer size positive, every sequence non-empty; raises ConfigError naming the key."""
  for key, value in values.items():
    items = value if isinstance(value, (tuple, list)) else (value,)
    if items and all(is_int(v) for v in items) and min(items) < 1:
      raise ConfigError(f"model.{key}", f"must be positive, got {value!r}")
    if isinstance(value, (tuple, list)) and not items and key != "stage_blocks":
      raise ConfigError(f"model.{key}", f"model {name!r} needs at least one entry")


def build_model(
  config: ml_collections.ConfigDict, num_classes: int, input_shape: Sequence[int]
) -> nn.Module:
  """The module named by `config.name`, its callables made from the names in `config` (see the
  module docstring) and its own fields (`widths`, ...) taken from it.

  `input_shape` is one example's `[*spatial, channels]`. Unknown names or keys, non-positive sizes
  and configurations that do not fit the input (a kernel larger than a VALID input, too many
  pooling stages) raise `ConfigError` here, before anything is compiled.
  """
  cls = lookup(MODELS, config.name, "model.name", "model")
  own = fields(cls) - fields(Network) - set(CONFIG_DEFAULTS)
  given = {k: v for k, v in config.items() if k != "name"}
  for key in given:
    if key not in own and key not in CONFIG_DEFAULTS:
      raise ConfigError(
        f"model.{key}",
        f"model {config.name!r} has no such field; it has: "
        f"{', '.join(sorted(own | set(CONFIG_DEFAULTS)))}",
      )
  _check_values(config.name, given)
  values = {**CONFIG_DEFAULTS, **MODEL_DEFAULTS.get(config.name, {}), **given}
  # A lowering stays a name down to each `Conv` (`conv.conv` picks the function): checked here.
  lookup(dict.fromkeys(conv.LOWERING_NAMES), values["lowering"], "model.lowering", "lowering")
  act = activations.get(values["activation"], negative_slope=values["negative_slope"])
  settings = {k: values[k] for k in ("kernel_size", "padding", "norm", "lowering", "reduction")}
  settings["activation"] = act

  def block(name: str, key: str) -> ModuleDef:
    return bind(lookup(BLOCKS, name, key, "block"), **settings)

  head = lookup(HEADS, values["head"], "model.head", "head")
  model = cls(
    num_classes,
    block=block(values["block"], "model.block"),
    stage_blocks=tuple(block(name, "model.stage_blocks") for name in values["stage_blocks"]),
    head=bind(head, hidden=values["hidden"], activation=act),
    **{k: settings[k] for k in ("activation", "norm") if k in fields(cls)},
    **{k: given[k] for k in own if k in given},
  )
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False)
    )
  except shapes.ShapeError as e:
    keys = own | set(CONFIG_DEFAULTS)
    key = e.field if e.field in keys else "widths" if "widths" in keys else "name"
    raise ConfigError(f"model.{key}", f"{e} (input {'x'.join(map(str, input_shape))})") from None
  return model
