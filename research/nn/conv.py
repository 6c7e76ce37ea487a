"""The project's one convolution: channels-last, 1, 2 or 3 spatial dimensions, over `jax.lax`.

Like every deep-learning "convolution" it is a cross-correlation: the kernel is not flipped.
"""

import jax.numpy as jnp
from jax import lax

from research.nn import shapes

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def conv(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  *,
  strides: int | tuple[int, ...] = 1,
  padding: shapes.Padding = "VALID",
  dilation: int | tuple[int, ...] = 1,
  groups: int = 1,
) -> jnp.ndarray:
  """Cross-correlates `x` `[batch, *spatial, c_in]` with `kernel`
  `[*window, c_in // groups, c_out]`.

  Returns `[batch, *out_spatial, c_out]` with `out_spatial = shapes.conv_output_shape(...)`.
  `padding` is "SAME", "VALID", an int (the same on both sides of every axis) or one (lo, hi) pair
  per axis; `dilation` spaces the kernel taps (atrous convolution); `groups` splits channels into
  independent groups (`groups = c_in` is a depthwise convolution).
  """
  ndim = kernel.ndim - 2
  if x.ndim != ndim + 2:
    raise shapes.ShapeError(
      "kernel_size",
      f"a {ndim}-d kernel needs a [batch, {ndim} spatial, channels] input, got shape {x.shape}",
    )
  if x.shape[-1] != kernel.shape[-2] * groups or kernel.shape[-1] % groups:
    raise shapes.ShapeError(
      "groups",
      f"input has {x.shape[-1]} channels and the kernel {kernel.shape[-1]} "
      f"outputs, but it expects {kernel.shape[-2]} inputs x {groups} groups and a "
      f"multiple of {groups} outputs",
    )
  # Raises if the kernel does not fit.
  shapes.conv_output_shape(x.shape[1:-1], kernel.shape[:-2], strides, padding, dilation)
  sp = _SPATIAL[ndim]
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=shapes.as_tuple(strides, ndim, "strides"),
    padding=shapes.explicit_padding(padding, ndim),
    rhs_dilation=shapes.as_tuple(dilation, ndim, "dilation"),
    dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
    feature_group_count=groups,
  )


def conv1d_full(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """The textbook convolution of two signals, `(a * b)[n] = sum_m a[m] b[n - m]`,
  length `len(a) + len(b) - 1`.

  A true convolution (the kernel is flipped), computed with `conv` and full zero padding; equals
  `numpy.convolve(a, b)`.
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  k = b.shape[0]
  out = conv(a[None, :, None], b[::-1, None, None], padding=((k - 1, k - 1),))
  return out[0, :, 0]
