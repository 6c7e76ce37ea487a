"""Lowerings of the project's convolution: one cross-correlation computed three ways, so that a
benchmark, or `conv(..., lowering="auto")`, can take the fastest per shape.

Each lowering maps channels-last `x` `[batch, *spatial, c_in]` and `kernel`
`[*window, c_in // groups, c_out]` to `[batch, *out_spatial, c_out]`
(`out_spatial = shapes.conv_output_shape(...)`), with the signature
`(x, kernel, *, strides, padding, dilation, groups)` of `conv.conv`. All are pure `jax.numpy` /
`lax`, jit-able and differentiable by ordinary autodiff, and agree to rounding. With
`taps = prod(window)`, `c_g = c_in / groups` and `o_g = c_out / groups`:

  native   `lax.conv_general_dilated`, XLA's own convolution.
  shifted  pad x once, then one matmul per tap t:
           y = sum_t x_padded[strided, dilated slice at t] @ kernel[t]
           (taps matmuls of [batch * out_pixels, c_g] x [c_g, o_g] per group).
  im2col   gather every tap into patches `[batch, *out_spatial, groups, taps * c_g]`, then one
           matmul with the kernel as `[groups, taps * c_g, o_g]` (the patches hold taps times as
           many values as the output pixels times c_in).

Groups are a batch dimension of the contraction (channels reshaped to `[groups, c_g]`); half-
precision inputs are accumulated in float32, as XLA's convolution does.

`choose` picks a lowering per (platform, shapes, strides, padding, dilation, groups, dtype) from a
cache table (`nn.lowering_table`), measuring the three with `measure` (the project's one timing
harness, `research.measure.timing`) the first time a key is seen.
"""

import itertools
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.errors import first_line
from research.measure import timing  # Imports nothing of `research.nn`: no cycle.
from research.nn import lowering_table, shapes

logger = logging.getLogger(__name__)

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}

Lowering = Callable[..., jnp.ndarray]


def native(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  *,
  strides: int | Sequence[int] = 1,
  padding: shapes.Padding = "VALID",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
) -> jnp.ndarray:
  """`lax.conv_general_dilated` in the channels-last layout (see the module docstring)."""
  ndim = kernel.ndim - 2
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


def _same_pairs(
  spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
  """The (lo, hi) pixels of "SAME" padding per axis, as `lax` pads: the output is ceil(n / s)
  and the odd pixel goes last."""
  pairs = []
  for n, k, s, d in zip(spatial, window, strides, dilation):
    total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
    pairs.append((total // 2, total - total // 2))
  return tuple(pairs)


def _padded_taps(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  strides: int | Sequence[int],
  padding: shapes.Padding,
  dilation: int | Sequence[int],
  groups: int,
) -> list[jnp.ndarray]:
  """The input each kernel tap multiplies, one `[batch, *out_spatial, groups, c_g]` per tap in
  the row-major order of `kernel[..., :, :]`: x is zero-padded once and sliced at offset
  `tap * dilation` with step `strides`."""
  ndim = kernel.ndim - 2
  window = kernel.shape[:ndim]
  stride = shapes.as_tuple(strides, ndim, "strides")
  dil = shapes.as_tuple(dilation, ndim, "dilation")
  pad = shapes.explicit_padding(padding, ndim)
  if pad == "SAME":
    pairs = _same_pairs(x.shape[1:-1], window, stride, dil)
  else:
    pairs = ((0, 0),) * ndim if pad == "VALID" else pad
  out = shapes.conv_output_shape(x.shape[1:-1], window, stride, pairs, dil)  # Raises if no fit.
  xp = lax.pad(
    x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pairs), (0, 0, 0))
  )
  batch, c_in = x.shape[0], x.shape[-1]
  taps = []
  for tap in itertools.product(*map(range, window)):
    start = tuple(t * d for t, d in zip(tap, dil))
    limit = tuple(b + (o - 1) * s + 1 for b, o, s in zip(start, out, stride))
    piece = lax.slice(xp, (0, *start, 0), (batch, *limit, c_in), (1, *stride, 1))
    taps.append(piece.reshape(*piece.shape[:-1], groups, c_in // groups))
  return taps


def _grouped_kernel(kernel: jnp.ndarray, groups: int) -> jnp.ndarray:
  """`kernel` `[*window, c_g, c_out]` as `[taps, groups, c_g, o_g]` (lax's grouping: group g owns
  the outputs `g * o_g : (g + 1) * o_g`)."""
  c_g, c_out = kernel.shape[-2:]
  return kernel.reshape(-1, c_g, groups, c_out // groups).transpose(0, 2, 1, 3)


def _accumulator(x: jnp.ndarray, kernel: jnp.ndarray) -> tuple[jnp.dtype, jnp.dtype]:
  """(dtype of the result, dtype to accumulate in): float32 for half-precision floats."""
  dtype = jnp.result_type(x.dtype, kernel.dtype)
  wide = jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32
  return dtype, jnp.dtype(jnp.float32) if wide else dtype


def _grouped_matmul(a: jnp.ndarray, w: jnp.ndarray, acc: jnp.dtype) -> jnp.ndarray:
  """`a` `[..., groups, k]` times `w` `[groups, k, o_g]`, group by group: `[..., groups * o_g]`."""
  if a.shape[-2] == 1:
    return jnp.einsum("...k,ko->...o", a[..., 0, :], w[0], preferred_element_type=acc)
  y = jnp.einsum("...gk,gko->...go", a, w, preferred_element_type=acc)
  return y.reshape(*y.shape[:-2], -1)


def shifted(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  *,
  strides: int | Sequence[int] = 1,
  padding: shapes.Padding = "VALID",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
) -> jnp.ndarray:
  """The sum over kernel taps of one matmul each (see the module docstring)."""
  dtype, acc = _accumulator(x, kernel)
  w = _grouped_kernel(kernel, groups)
  y = None
  for t, piece in enumerate(_padded_taps(x, kernel, strides, padding, dilation, groups)):
    term = _grouped_matmul(piece, w[t], acc)
    y = term if y is None else y + term
  return y.astype(dtype)


def im2col(
  x: jnp.ndarray,
  kernel: jnp.ndarray,
  *,
  strides: int | Sequence[int] = 1,
  padding: shapes.Padding = "VALID",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
) -> jnp.ndarray:
  """One matmul of the stacked taps (patches) with the flattened kernel (see the module
  docstring)."""
  dtype, acc = _accumulator(x, kernel)
  taps = _padded_taps(x, kernel, strides, padding, dilation, groups)
  patches = jnp.stack(taps, axis=-2)  # [batch, *out_spatial, groups, taps, c_g]
  patches = patches.reshape(*patches.shape[:-2], -1)
  w = _grouped_kernel(kernel, groups)  # [taps, groups, c_g, o_g]
  w = w.transpose(1, 0, 2, 3).reshape(groups, -1, w.shape[-1])
  return _grouped_matmul(patches, w, acc).astype(dtype)


LOWERINGS: dict[str, Lowering] = {"native": native, "shifted": shifted, "im2col": im2col}


def measure(
  c: lowering_table.Convolution,
  *,
  warmup: int = 2,
  repeats: int = timing.MIN_REPEATS,
) -> dict[str, float]:
  """Seconds per call of each lowering on `platform`'s first device: the median of `repeats`
  timed calls (after `warmup` untimed ones, the first of which compiles; the three take turns,
  `timing.measure_interleaved`) of the jitted forward pass and gradient of `sum(y)` wrt x and
  kernel (the forward pass alone for integer dtypes), on arrays of ones.

  Safe to call while tracing (as `conv(lowering="auto")` does inside `jit`): it runs under
  `jax.ensure_compile_time_eval`, on concrete arrays.
  """
  device = jax.devices(c.platform)[0]
  dtype = jnp.dtype(c.dtype)
  with jax.ensure_compile_time_eval():
    x = jax.device_put(np.ones(c.x_shape, dtype), device)
    kernel = jax.device_put(np.ones(c.kernel_shape, dtype), device)
    if isinstance(x, jax.core.Tracer):  # Then every call below would be traced, not run.
      raise RuntimeError("measure ran inside a trace: it would time tracing, not running")
    calls = {}
    for name, fn in LOWERINGS.items():

      def loss(x, kernel, fn=fn):
        y = fn(
          x, kernel, strides=c.strides, padding=c.padding, dilation=c.dilation, groups=c.groups
        )
        return jnp.sum(y)

      grad = jax.value_and_grad(loss, argnums=(0, 1))
      calls[name] = (jax.jit(grad if jnp.issubdtype(dtype, jnp.inexact) else loss), (x, kernel))
    times = timing.measure_interleaved(calls, warmup=warmup, repeats=repeats)
  return {name: t.median for name, t in times.items()}


def choose(
  c: lowering_table.Convolution,
  table_path: str | None = None,
  timer: Callable[..., dict[str, float]] = measure,
) -> str:
  """The lowering recorded for this convolution in the table at `table_path` (default
  `lowering_table.default_table_path()`; its format is there); if it has none, measures the three
  with `timer(c)` (`measure`), records the
  fastest and returns it. A key present in the table is never measured again. If the table cannot
  be written the choice is still returned (with a warning).
  """
  path = table_path or lowering_table.default_table_path()
  key = lowering_table.table_key(c)
  choice = lowering_table.recorded(lowering_table.load_table(path), key, path, LOWERINGS)
  if choice is not None:
    return choice
  seconds = timer(c)
  choice = min(seconds, key=seconds.get)
  logger.info("lowering for %s: %s (seconds %s)", key, choice, seconds)
  entries = lowering_table.load_table(path)  # Again: another process may have written meanwhile.
  recorded = lowering_table.recorded(entries, key, path, LOWERINGS)
  if recorded is not None:
    return recorded
  entries[key] = {"choice": choice, "seconds": seconds, "jax": jax.__version__}
  try:
    lowering_table.write_table(path, entries)
  except OSError as e:
    message = "cannot write lowering table %s (%s); %s is not recorded"
    logger.warning(message, path, first_line(e), key)
  return choice
