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
JSON cache table, measuring the three with `measure` the first time a key is seen; see `choose`
for the table's path and format.
"""

import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.nn import shapes

logger = logging.getLogger(__name__)

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}

TABLE_ENV = "CONVLAB_LOWERING_TABLE"
TABLE_FORMAT = 1

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


def default_table_path() -> str:
  """`$CONVLAB_LOWERING_TABLE` if set, else `$XDG_CACHE_HOME/convlab/lowering.json`
  (`XDG_CACHE_HOME` defaults to `~/.cache`)."""
  path = os.environ.get(TABLE_ENV)
  if path:
    return path
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "convlab", "lowering.json")


def _ints(values: Sequence[int]) -> str:
  return ",".join(str(int(v)) for v in values)


def table_key(
  platform: str,
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: int | Sequence[int],
  padding: shapes.Padding,
  dilation: int | Sequence[int],
  groups: int,
  dtype,
) -> str:
  """The table's key for one convolution, with ints broadcast per axis and padding upper-cased,
  e.g. `cpu|x=2,8,8,4|kernel=3,3,2,6|strides=1,1|padding=SAME|dilation=1,1|groups=2|dtype=float32`;
  explicit padding reads `padding=1:1,0:2` ((lo, hi) per axis)."""
  ndim = len(kernel_shape) - 2
  pad = shapes.explicit_padding(padding, ndim)
  pad_text = pad if isinstance(pad, str) else ",".join(f"{lo}:{hi}" for lo, hi in pad)
  return "|".join(
    [
      platform,
      f"x={_ints(x_shape)}",
      f"kernel={_ints(kernel_shape)}",
      f"strides={_ints(shapes.as_tuple(strides, ndim, 'strides'))}",
      f"padding={pad_text}",
      f"dilation={_ints(shapes.as_tuple(dilation, ndim, 'dilation'))}",
      f"groups={int(groups)}",
      f"dtype={jnp.dtype(dtype).name}",
    ]
  )


def load_table(path: str) -> dict[str, dict]:
  """The entries of the table at `path`; empty if it is missing, or (with a warning) unreadable or
  not a table."""
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
  except FileNotFoundError:
    logger.info("no lowering table at %s yet; starting an empty one", path)
    return {}
  except (OSError, ValueError) as e:
    logger.warning("lowering table %s is unreadable (%s); starting an empty one", path, e)
    return {}
  if not (
    isinstance(table, dict)
    and table.get("format") == TABLE_FORMAT
    and isinstance(table.get("entries"), dict)
  ):
    logger.warning(
      "lowering table %s is not a format-%d table; starting an empty one", path, TABLE_FORMAT
    )
    return {}
  return table["entries"]


def _recorded(entries: dict[str, dict], key: str, path: str) -> str | None:
  """The choice recorded for `key`, or None if absent or (with a warning) invalid."""
  entry = entries.get(key)
  if entry is None:
    return None
  if isinstance(entry, dict) and entry.get("choice") in LOWERINGS:
    return entry["choice"]
  logger.warning("lowering table %s has an invalid entry for %s: %r", path, key, entry)
  return None


def _write_table(path: str, entries: dict[str, dict]) -> None:
  """Writes the table atomically: a temporary file in the same folder, then `os.replace`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lowering-", suffix=".json.tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"format": TABLE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def measure(
  platform: str,
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: int | Sequence[int],
  padding: shapes.Padding,
  dilation: int | Sequence[int],
  groups: int,
  dtype,
  *,
  warmup: int = 2,
  repeats: int = 5,
) -> dict[str, float]:
  """Seconds per call of each lowering on `platform`'s first device: the median of `repeats`
  timed calls (after `warmup` untimed ones, the first of which compiles) of the jitted forward
  pass and gradient of `sum(y)` wrt x and kernel (the forward pass alone for integer dtypes), on
  arrays of ones.

  Safe to call while tracing (as `conv(lowering="auto")` does inside `jit`): it runs under
  `jax.ensure_compile_time_eval`, on concrete arrays.
  """
  device = jax.devices(platform)[0]
  dtype = jnp.dtype(dtype)
  seconds = {}
  with jax.ensure_compile_time_eval():
    x = jax.device_put(np.ones(x_shape, dtype), device)
    kernel = jax.device_put(np.ones(kernel_shape, dtype), device)
    for name, fn in LOWERINGS.items():

      def loss(x, kernel, fn=fn):
        y = fn(x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
        return jnp.sum(y)

      if jnp.issubdtype(dtype, jnp.inexact):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      else:
        step = jax.jit(loss)
      for _ in range(warmup):
        out = jax.block_until_ready(step(x, kernel))
        if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(out)):
          raise RuntimeError("measure ran inside a trace: it would time tracing, not running")
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(x, kernel))
        times.append(time.perf_counter() - start)
      seconds[name] = statistics.median(times)
  return seconds


def choose(
  platform: str,
  x_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: int | Sequence[int],
  padding: shapes.Padding,
  dilation: int | Sequence[int],
  groups: int,
  dtype,
  table_path: str | None = None,
) -> str:
  """The lowering recorded for this convolution in the table at `table_path`
  (default `default_table_path()`); if it has none, `measure`s the three, records the fastest and
  returns it. A key present in the table is never measured again.

  The table is JSON, `{"format": 1, "entries": {KEY: ENTRY}}`, KEY from `table_key` and ENTRY
  `{"choice": NAME, "seconds": {NAME: median seconds, ...}, "jax": version}`. It is rewritten
  atomically; a missing or unreadable one is started afresh (with a warning if unreadable), and
  if it cannot be written the choice is still returned (with a warning).
  """
  path = table_path or default_table_path()
  key = table_key(platform, x_shape, kernel_shape, strides, padding, dilation, groups, dtype)
  choice = _recorded(load_table(path), key, path)
  if choice is not None:
    return choice
  seconds = measure(platform, x_shape, kernel_shape, strides, padding, dilation, groups, dtype)
  choice = min(seconds, key=seconds.get)
  logger.info("lowering for %s: %s (seconds %s)", key, choice, seconds)
  entries = load_table(path)  # Again: another process may have written meanwhile.
  recorded = _recorded(entries, key, path)
  if recorded is not None:
    return recorded
  entries[key] = {"choice": choice, "seconds": seconds, "jax": jax.__version__}
  try:
    _write_table(path, entries)
  except OSError as e:
    logger.warning("cannot write lowering table %s (%s); %s is not recorded", path, e, key)
  return choice
