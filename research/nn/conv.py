"""The project's one convolution: channels-last, 1, 2 or 3 spatial dimensions, over `jax.lax`.

Like every deep-learning "convolution" it is a cross-correlation: the kernel is not flipped.
How it is computed (its lowering) is chosen by name; see `research.nn.lowering`.
"""

import jax
import jax.numpy as jnp

from research.nn import lowering as lowering_lib
from research.nn import lowering_table, shapes

LOWERING_NAMES = (*lowering_lib.LOWERINGS, "auto")


def conv(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  *,
  strides: int | tuple[int, ...] = 1,
  padding: shapes.Padding = "VALID",
  dilation: int | tuple[int, ...] = 1,
  groups: int = 1,
  lowering: str = "native",
) -> jnp.ndarray:
  """Cross-correlates `x` `[batch, *spatial, c_in]` with `kernel`
  `[*window, c_in // groups, c_out]`.

  Returns `[batch, *out_spatial, c_out]` with `out_spatial = shapes.conv_output_shape(...)`.
  `padding` is "SAME", "VALID", an int (the same on both sides of every axis) or one (lo, hi) pair
  per axis; `dilation` spaces the kernel taps (atrous convolution); `groups` splits channels into
  independent groups (`groups = c_in` is a depthwise convolution).

  `lowering` is "native" (`lax.conv_general_dilated`), "shifted" (one matmul per kernel tap),
  "im2col" (one matmul of the gathered patches) or "auto": the one recorded for this platform,
  shape and dtype in the cache table of `lowering.choose`, measured and recorded there the first
  time (at trace time, so it works inside `jit`). All agree to rounding.
  """
  if not isinstance(lowering, str) or lowering not in LOWERING_NAMES:
    raise ValueError(f"lowering must be one of {', '.join(LOWERING_NAMES)}; got {lowering!r}")
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
  if lowering == "auto":
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    lowering = lowering_lib.choose(
      lowering_table.Convolution(
        jax.default_backend(), x.shape, kernel.shape, strides, padding, dilation, groups, dtype
      )
    )
  return lowering_lib.LOWERINGS[lowering](
    x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups
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
