"""Analytic cost of a module: parameters, multiply-accumulates (MACs) and FLOPs,
per layer and in total.

The one place the counting conventions live. Layers are found in the module tree, not restated per
block: `layers(module, x)` runs the module abstractly (`jax.eval_shape`, nothing computed) with a
method interceptor that records every `blocks.Conv` and `flax.linen.Dense` call and its shapes, and
one formula per layer type (`COUNTERS`) serves every block and model.

Conventions (B = batch, out = output pixels per example, K = kernel taps, G = groups):
  conv MACs      = B * out * K * (C_in / G) * C_out       (every tap, SAME padding counted naively)
  dense MACs     = rows * D_in * D_out                    (rows = all leading dimensions)
  forward FLOPs  = 2 * MACs + bias adds                   (one add per output element with a bias)
  backward FLOPs = 2 * MACs (weight gradient) + 2 * MACs (input gradient)
                   + bias adds (bias gradient)
                 so forward + backward = 6 * MACs + 2 * bias adds (3x the forward's MACs). A
                 layer reading the module's input directly needs no input gradient when the input
                 is data (`input_grad=False`: models): 4 * MACs + 2 * bias adds. (One reading
                 a parameter-free function of it, e.g. a pooled branch, is still given one.)
  train step     = forward + backward + optimizer FLOPs per parameter (`OPTIMIZER_FLOPS`)
                   x parameters.
Not counted: activations, BatchNorm, pooling, residual adds and the loss. Each costs O(1) FLOPs per
element against 2 K C_in / G per element for the layer that produced it (0.5% at K C_in / G = 100).

How XLA's count (`compiled.cost_analysis()["flops"]`) differs (on CPU; each difference is tested in
`tests/measure/`, and the README's `run.py cost` table shows them by how much):
  - Padding: XLA skips the taps that fall on SAME padding; `macs_in_bounds` counts exactly the taps
    inside the input (3x3 SAME on 32x32: (94/96)^2 = 0.959 of the naive count; on 100x100: 0.987).
  - Elementwise ops: XLA counts 1 FLOP per element for bias adds, activations, BatchNorm, pooling.
  - Grouped convolutions: XLA counts the weight gradient of a depthwise convolution as a dense one
    (C_in times the work), so its forward+backward count for `separable` is several times ours.
    The time follows XLA's count, not ours: XLA's CPU depthwise backward is slow.
  - The optimizer: XLA counts optax's actual ops; `OPTIMIZER_FLOPS` is the per-parameter count of
    the update formula, close to XLA's (a few FLOPs per parameter: negligible beside the layers).
So for dense (ungrouped) convolutions, 2 * macs_in_bounds + bias adds agrees with XLA to within the
elementwise ops (`XLA_RTOL`); the naive count exceeds XLA's by the skipped padding taps as well.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from research.nn import blocks, shapes

# Relative tolerance between 2 * macs_in_bounds + bias adds and XLA's count (forward and
# forward+backward) for ungrouped convolutions: the gap is the uncounted elementwise ops
# (activation, BatchNorm; 1-2 per element), 1 / (2 K C_in / G) per activation: narrow layers (a 1x1
# with few inputs, as inside a bottleneck) come closest to it. `tests/measure/test_cost.py` holds
# every ungrouped block of its table to it.
XLA_RTOL = 0.02

# FLOPs per parameter of one optimizer update, from optax's formulas (moments: 3 for b*m + (1-b)*g,
# 4 for b*v + (1-b)*g^2; then the bias corrections, sqrt, eps, divide, scale by -lr,
# add to the param).
OPTIMIZER_FLOPS = {
  "sgd": 2,  # -lr * g, + p (momentum adds 2: m = g + b * m).
  "adam": 14,  # m 3, v 4, 2 bias corrections, sqrt, + eps, divide, * -lr, + p.
  "adamw": 16,  # adam + weight decay (wd * p, add).
  "nadam": 17,  # adam + the Nesterov term (3).
  "rmsprop": 9,  # v 4, sqrt, + eps, divide, * -lr, + p.
  "lion": 11,  # interpolation 3, sign, weight decay 2, momentum 3, * -lr, + p.
  "lamb": 21,  # adam's direction 12, weight decay 2, two norms 4, trust-ratio scale, * -lr, + p.
}


@dataclasses.dataclass(frozen=True)
class Layer:
  """One convolution or dense layer applied to one input, batch included.

  `window` is the kernel's taps per spatial axis (`()` for dense). MACs are forward
  multiply-accumulates: `macs` over every tap, `macs_in_bounds` over the taps landing inside the
  input (XLA's convention).
  """

  path: str
  kind: str
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  window: tuple[int, ...]
  groups: int
  params: int
  macs: int
  macs_in_bounds: int
  bias_adds: int
  input_grad: bool

  # Derived from the fields above when the layer is made, and stored (a report's JSON holds them).
  forward_flops: int = dataclasses.field(init=False)  # 2 * macs + bias adds.
  # Forward, weight gradient, input gradient (if `input_grad`) and bias gradient.
  forward_backward_flops: int = dataclasses.field(init=False)

  def __post_init__(self):
    fwd_bwd = (6 if self.input_grad else 4) * self.macs + 2 * self.bias_adds
    object.__setattr__(self, "forward_flops", 2 * self.macs + self.bias_adds)  # Frozen: set once.
    object.__setattr__(self, "forward_backward_flops", fwd_bwd)

  @property
  def forward_backward_flops_in_bounds(self) -> int:
    return (6 if self.input_grad else 4) * self.macs_in_bounds + 2 * self.bias_adds


def _in_bounds_taps(
  size: int, out: int, kernel: int, stride: int, dilation: int, low_pad: int
) -> int:
  """(output position, tap) pairs along one axis whose input index lies in [0, size)."""
  index = np.arange(out)[:, None] * stride - low_pad + np.arange(kernel)[None, :] * dilation
  return int(np.count_nonzero((index >= 0) & (index < size)))


def _low_pads(
  spatial: Sequence[int], out: Sequence[int], window, strides, dilation, padding
) -> tuple[int, ...]:
  """Zero padding before each axis, as XLA applies it (SAME puts the odd pixel after)."""
  pad = shapes.explicit_padding(padding, len(spatial))
  if pad == "VALID":
    return (0,) * len(spatial)
  if pad == "SAME":
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    return tuple(
      max((o - 1) * s + span - n, 0) // 2 for n, o, s, span in zip(spatial, out, strides, spans)
    )
  return tuple(lo for lo, _ in pad)


def conv_layer(module: blocks.Conv, path: str, x_shape, y_shape, input_grad: bool) -> Layer:
  """The cost of `blocks.Conv` mapping `x_shape` `[b, *spatial, c_in]` to `y_shape`
  `[b, *out, c_out]`."""
  ndim = len(x_shape) - 2
  window = shapes.as_tuple(module.kernel_size, ndim, "kernel_size")
  strides = shapes.as_tuple(module.strides, ndim, "strides")
  dilation = shapes.as_tuple(module.dilation, ndim, "dilation")
  spatial, out = x_shape[1:-1], y_shape[1:-1]
  c_in, c_out, groups = x_shape[-1], y_shape[-1], module.groups
  per_tap = x_shape[0] * (c_in // groups) * c_out
  lows = _low_pads(spatial, out, window, strides, dilation, module.padding)
  in_bounds = math.prod(
    _in_bounds_taps(*a) for a in zip(spatial, out, window, strides, dilation, lows)
  )
  bias = c_out if module.use_bias else 0
  return Layer(
    path=path,
    kind="conv",
    input_shape=tuple(x_shape),
    output_shape=tuple(y_shape),
    window=window,
    groups=groups,
    params=math.prod(window) * (c_in // groups) * c_out + bias,
    macs=per_tap * math.prod(out) * math.prod(window),
    macs_in_bounds=per_tap * in_bounds,
    bias_adds=math.prod(y_shape) if bias else 0,
    input_grad=input_grad,
  )


def dense_layer(module: nn.Dense, path: str, x_shape, y_shape, input_grad: bool) -> Layer:
  """The cost of `flax.linen.Dense` mapping `[..., d_in]` to `[..., d_out]`."""
  macs = math.prod(x_shape[:-1]) * x_shape[-1] * y_shape[-1]
  bias = y_shape[-1] if module.use_bias else 0
  return Layer(
    path=path,
    kind="dense",
    input_shape=tuple(x_shape),
    output_shape=tuple(y_shape),
    window=(),
    groups=1,
    params=x_shape[-1] * y_shape[-1] + bias,
    macs=macs,
    macs_in_bounds=macs,
    bias_adds=math.prod(y_shape) if bias else 0,
    input_grad=input_grad,
  )


# One formula per layer type: (module, path, input shape, output shape, input_grad) -> Layer.
COUNTERS: dict[type, Callable[..., Layer]] = {blocks.Conv: conv_layer, nn.Dense: dense_layer}


def layers(module: nn.Module, x: Any, input_grad: bool = True, **kwargs) -> list[Layer]:
  """Every counted layer of `module` applied to `x` (an array or `jax.ShapeDtypeStruct`, batch
  included), in call order. Runs `module.init(key, x, **kwargs)` abstractly:
  nothing is computed or allocated.

  `input_grad=False` marks the layers that read `x` itself as needing no input gradient
  (a model's data).
  """
  return [layer for layer, _ in counted(module, x, input_grad, **kwargs)]


def counted(
  module: nn.Module, x: Any, input_grad: bool = True, **kwargs
) -> list[tuple[Layer, nn.Module]]:
  """`layers`, each with an unbound copy of its module (to run it alone: `run.py bench` times
  each layer's passes)."""
  found = []
  top = []

  def intercept(next_fun, args, kw, context):
    y = next_fun(*args, **kw)
    counter = COUNTERS.get(type(context.module))
    if counter is not None and context.method_name == "__call__":
      needs = input_grad or args[0] is not top[0]
      path = "/".join(context.module.path)
      layer = counter(context.module, path, args[0].shape, y.shape, needs)
      found.append((layer, context.module.clone(parent=None, name=None)))
    return y

  def init(x):
    top.append(x)
    with nn.intercept_methods(intercept):
      return module.init(jax.random.PRNGKey(0), x, **kwargs)

  jax.eval_shape(init, x)
  return found


def param_count(variables: Any) -> int:
  """Parameters in `variables["params"]` (arrays or shape structs),
  BatchNorm scales and biases included."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get("params", {})))


def optimizer_flops(name: str | None, params: int, momentum: float | None = None) -> int:
  """FLOPs of one optimizer update of `params` parameters (0 without an optimizer)."""
  if name is None:
    return 0
  per_param = OPTIMIZER_FLOPS.get(name)
  if per_param is None:
    raise ValueError(f"no FLOP count for optimizer {name!r}; add it to flops.OPTIMIZER_FLOPS")
  return (per_param + (2 if momentum else 0)) * params


@dataclasses.dataclass(frozen=True)
class Totals:
  """A module's analytic cost at one input shape: parameters, forward MACs, FLOPs of each pass."""

  params: int
  macs: int
  macs_in_bounds: int
  forward_flops: int
  forward_backward_flops: int
  train_step_flops: int


def totals(found: Sequence[Layer], params: int, optimizer: int = 0) -> Totals:
  """Sums over `found` layers; `params` counts every parameter and `optimizer` is
  `optimizer_flops(...)`."""
  fwd_bwd = sum(l.forward_backward_flops for l in found)
  return Totals(
    params=params,
    macs=sum(l.macs for l in found),
    macs_in_bounds=sum(l.macs_in_bounds for l in found),
    forward_flops=sum(l.forward_flops for l in found),
    forward_backward_flops=fwd_bwd,
    train_step_flops=fwd_bwd + optimizer,
  )


def in_bounds_flops(found: Sequence[Layer], pass_name: str) -> int:
  """FLOPs of a pass ("forward" or "forward_backward") counting only in-bounds taps, as XLA does."""
  if pass_name == "forward":
    return sum(2 * l.macs_in_bounds + l.bias_adds for l in found)
  return sum(l.forward_backward_flops_in_bounds for l in found)
