"""Models by name, assembled from blocks. Each maps `[batch, *spatial, channels]` floats to logits
`[batch, num_classes]`, in 1, 2 or 3 spatial dimensions.

Every model takes the same block fields: `block` (the name of the block every KxK convolution is
built as: conv, factorized, bottleneck, separable or pointwise), `kernel_size`, `padding`,
`activation` (a name in `activations.ACTIVATIONS`, used everywhere, the dense head included),
`negative_slope` (leaky_relu's) and `norm` (BatchNorm). So one config value
(`--config.model.block=factorized`) swaps every KxK convolution of a model for its factorized form.

`build_model(config.model, num_classes, input_shape)` is the one place a model config becomes a
module; it rejects an unknown or impossible configuration with a `ConfigError` naming the key, by
tracing the shapes (`jax.eval_shape`, no compilation).
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.config import is_int
from research.errors import ConfigError
from research.nn import activations, conv, shapes
from research.nn.activations import Activation, identity
from research.nn.blocks import BLOCKS, HEADS, Pointwise, fields, make, make_block
from research.registry import lookup

# Model fields that name a registry entry: (registry, kind).
NAMED_FIELDS = {
  "lowering": ({name: name for name in conv.LOWERING_NAMES}, "lowering"),
  "block": (BLOCKS, "block"),
  "head": (HEADS, "head"),
  "activation": (activations.ACTIVATIONS, "activation"),
}


class BlockFields(nn.Module):
  """Fields shared by every model: which block each KxK convolution is, and how it is configured."""

  num_classes: int
  block: str = "conv"
  kernel_size: int | Sequence[int] = 3
  padding: shapes.Padding = "SAME"
  activation: str = "relu"
  negative_slope: float = 0.01
  norm: bool = False
  head: str = "dense"
  hidden: int = 256
  lowering: str = "native"  # How every convolution is computed (`nn.conv.LOWERING_NAMES`).
  # The block of each stage (one name per width; the stem counts as the first stage), where it
  # differs by stage; empty: `block` everywhere.
  stage_blocks: Sequence[str] = ()
  reduction: int = 4  # The bottleneck block's 1x1 reduction: its inner width is width // reduction.

  def act(self):
    return activations.get(self.activation, negative_slope=self.negative_slope)

  def spatial(self, stage: int = 0) -> Callable[..., nn.Module]:
    """Makes the KxK block of stage `stage`: `spatial(stage)(features, strides=1,
    activation=model's)`, a `stage_blocks` entry where they are given, else `block`."""
    if self.stage_blocks and len(self.stage_blocks) != len(self.widths):
      raise shapes.ShapeError(
        "stage_blocks",
        f"stage_blocks {tuple(self.stage_blocks)} needs one block per width {tuple(self.widths)}",
      )
    return functools.partial(
      make_block,
      self.stage_blocks[stage] if self.stage_blocks else self.block,
      kernel_size=self.kernel_size,
      padding=self.padding,
      activation=self.act(),
      norm=self.norm,
      lowering=self.lowering,
      reduction=self.reduction,
    )

  def classify(self, x: jnp.ndarray) -> jnp.ndarray:
    return make(
      HEADS,
      self.head,
      "model.head",
      "head",
      num_classes=self.num_classes,
      hidden=self.hidden,
      activation=self.act(),
    )(x)


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


class CNN(BlockFields):
  """The Flax MNIST example's CNN: [block `width` -> avg-pool 2x2] per width, then the head (dense
  256 -> dense by default). With the defaults it is exactly that example's model."""

  widths: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage, width in enumerate(self.widths):
      x = self.spatial(stage)(width)(x, train)
      x = _pool(x, "avg", 2, 2)
    return self.classify(x)


class Plain(BlockFields):
  """A plain deep stack, no residual connections: one KxK block per width, a 2x2 average pool after
  every `pool_every` blocks (not after the last), then the head. With no normalization (the
  default), the activations ablation's model: gradients must pass through every activation."""

  widths: Sequence[int] = (16,) * 8
  pool_every: int = 2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage, width in enumerate(self.widths):
      x = self.spatial(stage)(width)(x, train)
      if (stage + 1) % self.pool_every == 0 and stage + 1 < len(self.widths):
        x = _pool(x, "avg", 2, 2)
    return self.classify(x)


class ResidualBlock(nn.Module):
  """ResNet's basic block: KxK (stride) -> KxK, added to the input
  (1x1 projection where shapes differ)."""

  spatial: Callable[..., nn.Module]  # BlockFields.spatial()
  activation: Activation
  norm: bool
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    y = self.spatial(features=self.features, strides=self.strides)(x, train)
    y = self.spatial(features=self.features, activation=identity)(y, train)
    if x.shape != y.shape:
      x = Pointwise(self.features, strides=self.strides, activation=identity, norm=self.norm)(
        x, train
      )
    return self.activation(x + y)


class ResNet(BlockFields):
  """A small ResNet: stem KxK `widths[0]` -> stages of `stage_sizes[i]` residual blocks of
  `widths[i]` (stride 2 entering every stage but the first) -> head
  (global average pool + linear by default)."""

  widths: Sequence[int] = (16, 32)
  stage_sizes: Sequence[int] = (2, 2)
  norm: bool = True
  head: str = "gap"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if len(self.stage_sizes) != len(self.widths):
      raise shapes.ShapeError(
        "stage_sizes",
        f"stage_sizes {tuple(self.stage_sizes)} needs one entry per width {tuple(self.widths)}",
      )
    x = self.spatial(0)(self.widths[0])(x, train)
    for i, (width, size) in enumerate(zip(self.widths, self.stage_sizes)):
      for j in range(size):
        x = ResidualBlock(
          self.spatial(i), self.act(), self.norm, width, 2 if i > 0 and j == 0 else 1
        )(x, train)
    return self.classify(x)


class InceptionModule(nn.Module):
  """Four parallel branches concatenated to `features` channels (a quarter each): 1x1; 1x1 -> KxK;
  1x1 -> KxK -> KxK (Inception-v3's two 3x3 in place of a 5x5); 3x3 max-pool -> 1x1. The 1x1
  reductions before the KxK convolutions have `features // 8` channels."""

  spatial: Callable[..., nn.Module]  # BlockFields.spatial()
  activation: Activation
  norm: bool
  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.features % 8:
      raise shapes.ShapeError(
        "widths", f"an Inception module's width must be a multiple of 8, got {self.features}"
      )
    quarter, eighth, act, norm = self.features // 4, self.features // 8, self.activation, self.norm
    one = Pointwise(quarter, activation=act, norm=norm)(x, train)
    two = self.spatial(quarter)(Pointwise(eighth, activation=act, norm=norm)(x, train), train)
    three = Pointwise(eighth, activation=act, norm=norm)(x, train)
    three = self.spatial(quarter)(self.spatial(quarter)(three, train), train)
    pool = nn.max_pool(x, (3,) * (x.ndim - 2), padding="SAME")
    four = Pointwise(quarter, activation=act, norm=norm)(pool, train)
    return jnp.concatenate([one, two, three, four], axis=-1)


class Inception(BlockFields):
  """A small Inception network: stem KxK `stem_width` -> [Inception module `width` -> 2x2 max-pool
  between modules] per width -> head (global average pool + linear by default)."""

  widths: Sequence[int] = (32, 64)
  stem_width: int = 32
  norm: bool = True
  head: str = "gap"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = self.spatial(0)(self.stem_width)(x, train)
    for i, width in enumerate(self.widths):
      if i:
        x = _pool(x, "max", 2, 2)
      x = InceptionModule(self.spatial(i), self.act(), self.norm, width)(x, train)
    return self.classify(x)


MODELS: dict[str, type[nn.Module]] = {
  "cnn": CNN,
  "plain": Plain,
  "resnet": ResNet,
  "inception": Inception,
}


def _check_values(name: str, kwargs: dict) -> None:
  """Names must be registered and every integer size positive; raises ConfigError naming the key."""
  for key, value in kwargs.items():
    if key in NAMED_FIELDS:
      registry, kind = NAMED_FIELDS[key]
      lookup(registry, value, f"model.{key}", kind)
    if key == "stage_blocks":
      for block in value:
        lookup(BLOCKS, block, "model.stage_blocks", "block")
      continue
    values = value if isinstance(value, (tuple, list)) else (value,)
    if values and all(is_int(v) for v in values) and min(values) < 1:
      raise ConfigError(f"model.{key}", f"must be positive, got {value!r}")
    if isinstance(value, (tuple, list)) and not values:
      raise ConfigError(f"model.{key}", f"model {name!r} needs at least one entry")


def build_model(
  config: ml_collections.ConfigDict, num_classes: int, input_shape: Sequence[int]
) -> nn.Module:
  """The module named by `config.name`, with the other keys of `config` as its fields.

  `input_shape` is one example's `[*spatial, channels]`. Unknown names, non-positive sizes and
  configurations that do not fit the input (a kernel larger than a VALID input, too many pooling
  stages) raise `ConfigError` here, before anything is compiled.
  """
  cls = lookup(MODELS, config.name, "model.name", "model")
  own = fields(cls) - {"num_classes"}
  kwargs = {k: v for k, v in config.items() if k != "name"}
  for key in kwargs:
    if key not in own:
      raise ConfigError(
        f"model.{key}", f"model {config.name!r} has no such field; it has: {', '.join(sorted(own))}"
      )
  _check_values(config.name, kwargs)
  model = cls(num_classes=num_classes, **kwargs)
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False)
    )
  except shapes.ShapeError as e:
    key = e.field if e.field in own else "widths" if "widths" in own else "name"
    raise ConfigError(f"model.{key}", f"{e} (input {'x'.join(map(str, input_shape))})") from None
  return model
