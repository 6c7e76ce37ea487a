"""Convolutional blocks by name: pure Flax (linen) modules over the project's one `conv`.

Every block maps `[batch, *spatial, c_in]` to `[batch, *out_spatial, features]` in 1, 2 or 3 spatial
dimensions, and shares the fields `features`, `strides`, `activation` (a callable, applied last) and
`norm` (BatchNorm after each convolution; convolutions then drop their bias). Blocks with a spatial
window also take `kernel_size`, `padding` and `dilation`;
`out_spatial = shapes.conv_output_shape(...)` in each. `make_block(name, ...)` builds any of them
from one set of arguments, so a model can swap every KxK convolution for its factorized, bottleneck,
separable or pointwise form by one config value.

Parameter counts (K = kernel taps per axis, d = spatial dims, biases without `norm`):
  conv        K^d Cin Cout / groups + Cout
  factorized  (2-d) K Cin Cmid + Cmid + K Cmid Cout + Cout
  pointwise   Cin Cout + Cout
  bottleneck  Cin Cmid + Cmid + K^d Cmid Cmid + Cmid + Cmid Cout + Cout  (inner `conv`)
  separable   K^d Cin m + Cin m + Cin m Cout + Cout                      (depth multiplier m)
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.config import positive_int
from research.nn import conv as conv_lib
from research.nn import shapes
from research.nn.activations import Activation, identity
from research.registry import lookup

IntOrSeq = int | Sequence[int]
# Fields a model hands every block (and head) alike: a block without a spatial window ignores
# `kernel_size`, `padding` and `dilation`; a GAP head ignores `hidden` and `activation`. Any other
# field a block does not have is an error (a misspelt field must not be silently dropped).
SHARED_FIELDS = frozenset(
  {
    "kernel_size",
    "strides",
    "padding",
    "dilation",
    "activation",
    "norm",
    "hidden",
    "lowering",
    "reduction",
  }  # fmt: skip
)


def _check_features(features: int, field: str = "features") -> None:
  if not positive_int(features):
    raise shapes.ShapeError(field, f"{field} must be a positive int, got {features!r}")


class Conv(nn.Module):
  """A convolution layer: `[batch, *spatial, c_in]` -> `[batch, *out_spatial, features]`
  (no activation).

  Parameters: `kernel` `[*window, c_in // groups, features]` (LeCun-normal init, as
  `flax.linen.Conv`) and `bias` `[features]` (zeros) if `use_bias`.
  """

  features: int
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 1
  padding: shapes.Padding = "SAME"
  dilation: IntOrSeq = 1
  groups: int = 1
  use_bias: bool = True
  lowering: str = "native"  # How XLA computes it: `nn.conv.LOWERING_NAMES` (same numbers).

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    _check_features(self.features)
    ndim = x.ndim - 2
    window = shapes.as_tuple(self.kernel_size, ndim, "kernel_size")
    c_in = x.shape[-1]
    if c_in % self.groups or self.features % self.groups:
      raise shapes.ShapeError(
        "groups",
        f"groups={self.groups} must divide both the {c_in} input and "
        f"{self.features} output channels",
      )
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), window + (c_in // self.groups, self.features)
    )
    y = conv_lib.conv(
      x,
      kernel,
      lowering=self.lowering,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
      groups=self.groups,
    )
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


def _norm(x: jnp.ndarray, enabled: bool, train: bool) -> jnp.ndarray:
  # Momentum 0.9, not flax's 0.99: runs here are hundreds of steps,
  # and the running statistics must keep up.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x) if enabled else x


class SpatialBlock(nn.Module):
  """Fields every block with a KxK window shares (see the module docstring)."""

  features: int
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 1
  padding: shapes.Padding = "SAME"
  dilation: IntOrSeq = 1
  activation: Activation = nn.relu
  norm: bool = False
  lowering: str = "native"  # Each convolution's lowering (`nn.conv.LOWERING_NAMES`).


class ConvBlock(SpatialBlock):
  """Full KxK (KxKxK in 3-d) convolution -> [BatchNorm] -> activation."""

  groups: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = Conv(
      self.features,
      self.kernel_size,
      self.strides,
      self.padding,
      self.dilation,
      self.groups,
      use_bias=not self.norm,
      lowering=self.lowering,
    )(x)
    return self.activation(_norm(x, self.norm, train))


def _along(value: Any, axis: int, ndim: int, rest: Any) -> tuple:
  """A per-axis tuple holding `value` at `axis` and `rest` elsewhere."""
  return tuple(value if i == axis else rest for i in range(ndim))


class Factorized(SpatialBlock):
  """Asymmetric factorization (Inception-v3): Kx1 -> 1xK in 2-d
  (one 1-d conv per spatial axis in general).

  Axis i's convolution carries axis i's kernel size, stride, dilation and padding. The intermediate
  maps have `mid_features` channels (default `min(c_in, features)`, the cheaper choice; at equal
  widths the pair costs 2K/K^2 of the full conv, 6/9 for K = 3) and pass through `mid_activation`
  (default none, so the pair is linear: kernels u (Kx1) and v (1xK) equal one KxK conv with
  kernel u v^T) and, with `norm`, BatchNorm. Then [BatchNorm] -> activation.
  """

  mid_features: int | None = None
  mid_activation: Activation | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    ndim = x.ndim - 2
    kernel = shapes.as_tuple(self.kernel_size, ndim, "kernel_size")
    strides = shapes.as_tuple(self.strides, ndim, "strides")
    dilation = shapes.as_tuple(self.dilation, ndim, "dilation")
    padding = shapes.explicit_padding(self.padding, ndim)
    mid = min(x.shape[-1], self.features) if self.mid_features is None else self.mid_features
    _check_features(mid, "mid_features")
    for axis in range(ndim):
      last = axis == ndim - 1
      pad = padding if isinstance(padding, str) else _along(padding[axis], axis, ndim, (0, 0))
      x = Conv(
        self.features if last else mid,
        _along(kernel[axis], axis, ndim, 1),
        _along(strides[axis], axis, ndim, 1),
        pad,
        _along(dilation[axis], axis, ndim, 1),
        use_bias=not self.norm,
        lowering=self.lowering,
      )(x)
      x = _norm(x, self.norm, train)
      if not last:
        x = (self.mid_activation or identity)(x)
    return self.activation(x)


class Pointwise(nn.Module):
  """1x1 convolution: mixes channels at each pixel, `[b, *s, c_in]` -> `[b, *s', features]`;
  [BatchNorm] -> activation. A 100x100x256 input with N filters of 1x1x256 gives 100x100xN."""

  features: int
  strides: IntOrSeq = 1
  activation: Activation = nn.relu
  norm: bool = False
  lowering: str = "native"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = Conv(
      self.features, 1, self.strides, "VALID", use_bias=not self.norm, lowering=self.lowering
    )(x)
    return self.activation(_norm(x, self.norm, train))


class Bottleneck(SpatialBlock):
  """1x1 reduce to `mid_features` -> act -> KxK (`inner` block) -> act
  -> 1x1 expand to `features` [+ x] -> act.

  `mid_features` defaults to `max(1, features // reduction)` (ResNet's 4). With `residual`, the
  input is added before the last activation, through a strided 1x1 projection when the shapes
  differ.
  """

  mid_features: int | None = None
  reduction: int = 4
  inner: str = "conv"
  residual: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    _check_features(self.features)
    mid = (
      max(1, self.features // self.reduction) if self.mid_features is None else self.mid_features
    )
    _check_features(mid, "mid_features")
    y = Pointwise(mid, activation=self.activation, norm=self.norm, lowering=self.lowering)(x, train)
    y = make_block(
      self.inner,
      mid,
      kernel_size=self.kernel_size,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
      activation=self.activation,
      norm=self.norm,
      lowering=self.lowering,
      key="inner",
    )(y, train)
    y = Pointwise(self.features, activation=identity, norm=self.norm, lowering=self.lowering)(
      y, train
    )
    if self.residual:
      if x.shape[1:-1] != y.shape[1:-1] or x.shape[-1] != self.features:
        x = Pointwise(
          self.features,
          strides=self.strides,
          activation=identity,
          norm=self.norm,
          lowering=self.lowering,
        )(x, train)
      if x.shape != y.shape:
        raise shapes.ShapeError(
          "padding",
          f"the residual {x.shape} and the branch {y.shape} differ; "
          "use SAME padding for residual blocks",
        )
      y = y + x
    return self.activation(y)


class Separable(SpatialBlock):
  """Depthwise KxK (`groups = c_in`, `depth_multiplier` filters per channel) -> [mid_activation] ->
  1x1 pointwise to `features` -> [BatchNorm] -> activation (MobileNet / Xception)."""

  depth_multiplier: int = 1
  mid_activation: Activation | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    _check_features(self.depth_multiplier, "depth_multiplier")
    c_in = x.shape[-1]
    x = Conv(
      c_in * self.depth_multiplier,
      self.kernel_size,
      self.strides,
      self.padding,
      self.dilation,
      groups=c_in,
      use_bias=not self.norm,
      lowering=self.lowering,
    )(x)
    x = (self.mid_activation or identity)(_norm(x, self.norm, train))
    x = Conv(self.features, 1, use_bias=not self.norm, lowering=self.lowering)(x)
    return self.activation(_norm(x, self.norm, train))


def fields(cls: type[nn.Module]) -> set[str]:
  """The fields a block or head class takes (Flax's `parent` and `name` aside)."""
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def make(
  registry: Mapping[str, type[nn.Module]], name: str, key: str, kind: str, **kwargs
) -> nn.Module:
  """The module called `name` in `registry` (`kind`: "block" or "head"),
  with `kwargs` as its fields.

  Of the `SHARED_FIELDS`, those the module does not have are dropped (a pointwise block has no
  `kernel_size`); any other field it does not have is a `TypeError`. `key` names the config field
  for an unknown name.
  """
  cls = lookup(registry, name, key, kind)
  own = fields(cls)
  unknown = sorted(set(kwargs) - own - SHARED_FIELDS)
  if unknown:
    raise TypeError(
      f"{kind} {name!r} ({cls.__name__}) has no field {unknown[0]!r}; "
      f"it has: {', '.join(sorted(own))}"
    )
  return cls(**{k: v for k, v in kwargs.items() if k in own})


def make_block(name: str, features: int, key: str = "model.block", **kwargs) -> nn.Module:
  """`make(BLOCKS, ...)`: any block with `features` outputs from one set of arguments."""
  return make(BLOCKS, name, key, "block", features=features, **kwargs)


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


BLOCKS: dict[str, type[nn.Module]] = {
  "conv": ConvBlock,
  "factorized": Factorized,
  "pointwise": Pointwise,
  "bottleneck": Bottleneck,
  "separable": Separable,
}
HEADS: dict[str, type[nn.Module]] = {"dense": DenseHead, "gap": GAPHead}
