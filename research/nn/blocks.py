"""Convolutional blocks by name: pure Flax (linen) modules over the project's one `conv`.

Every block maps `[batch, *spatial, c_in]` to `[batch, *out_spatial, features]` in 1, 2 or 3 spatial
dimensions, and has the fields `features`, `strides`, `activation` (a callable, applied last),
`norm` (BatchNorm after each convolution; convolutions then drop their bias) and `lowering`. Blocks
with a spatial window (`SpatialBlock`) also take `kernel_size`, `padding` and `dilation`;
`out_spatial = shapes.conv_output_shape(...)` in each.

A model takes its block as a callable (`ModuleDef`: a class here, or a `functools.partial` of one
with its fields bound, as Flax's imagenet example takes `block_cls`) and calls it as
`block(features, strides=...)`, so one value swaps every KxK convolution for its factorized,
bottleneck, separable or pointwise form. Names exist only at the config edge: `BLOCKS` maps them to
the classes, `build_block` makes a block from a config's spec (`models.build_model` a model).

Parameter counts (K = kernel taps per axis, d = spatial dims, biases without `norm`):
  conv        K^d Cin Cout / groups + Cout
  factorized  (2-d) K Cin Cmid + Cmid + K Cmid Cout + Cout
  pointwise   Cin Cout + Cout
  bottleneck  Cin Cmid + Cmid + K^d Cmid Cmid + Cmid + Cmid Cout + Cout  (inner `ConvBlock`)
  separable   K^d Cin m + Cin m + Cin m Cout + Cout                      (depth multiplier m)
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.config import positive_int
from research.errors import ConfigError
from research.nn import activations, shapes
from research.nn import conv as conv_lib
from research.nn.activations import Activation, identity
from research.registry import lookup

IntOrSeq = int | Sequence[int]
# A module class, or a `functools.partial` of one with some fields bound: what a model or a block
# takes where it builds a sub-module, called with the remaining fields (Flax imagenet's ModuleDef).
ModuleDef = Callable[..., nn.Module]


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
  widths the pair costs 2K/K^2 of the full conv) and pass through `mid_activation`
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
  """1x1 reduce to `mid_features` -> act -> KxK (the `inner` block, with this block's window)
  -> act -> 1x1 expand to `features` [+ x] -> act.

  `mid_features` defaults to `max(1, features // reduction)` (ResNet's 4). With `residual`, the
  input is added before the last activation, through a strided 1x1 projection when the shapes
  differ.
  """

  mid_features: int | None = None
  reduction: int = 4
  inner: ModuleDef = ConvBlock  # A block with a window (a `SpatialBlock`), given this one's.
  residual: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    _check_features(self.features)
    mid = (
      max(1, self.features // self.reduction) if self.mid_features is None else self.mid_features
    )
    _check_features(mid, "mid_features")
    y = Pointwise(mid, activation=self.activation, norm=self.norm, lowering=self.lowering)(x, train)
    y = self.inner(
      mid,
      kernel_size=self.kernel_size,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
      activation=self.activation,
      norm=self.norm,
      lowering=self.lowering,
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


BLOCKS: dict[str, type[nn.Module]] = {
  "conv": ConvBlock,
  "factorized": Factorized,
  "pointwise": Pointwise,
  "bottleneck": Bottleneck,
  "separable": Separable,
}


def fields(cls: type[nn.Module]) -> set[str]:
  """The fields a module class takes (Flax's `parent` and `name` aside)."""
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def build_block(spec: Mapping[str, Any], features: int, key: str) -> nn.Module:
  """The block a config's `spec` describes: `{"name": ..., **fields}`, the activations
  (`activation`, `mid_activation`) and the bottleneck's `inner` block also by name; `features`
  output channels unless `spec` sets them. An unknown name or field is a `ConfigError` naming
  `<key>.<field>`."""
  spec = dict(spec)
  cls = lookup(BLOCKS, spec.pop("name", None), f"{key}.name", "block")
  own = fields(cls)
  unknown = sorted(set(spec) - own)
  if unknown:
    raise ConfigError(
      f"{key}.{unknown[0]}",
      f"block {cls.__name__} has no such field; it has: {', '.join(sorted(own))}",
    )
  for field in ("activation", "mid_activation"):
    if isinstance(spec.get(field), str):
      spec[field] = activations.get(spec[field], f"{key}.{field}")
  if isinstance(spec.get("inner"), str):
    spec["inner"] = lookup(BLOCKS, spec["inner"], f"{key}.inner", "block")
  return cls(**{"features": features, **spec})
