"""Shape arithmetic of convolutions and pools, so impossible configurations fail before compilation.

For one spatial axis of `size` pixels, a kernel of `k` taps dilated by `d` spans `(k - 1) * d + 1`
pixels; with stride `s` the output has
  VALID: floor((size - span) / s) + 1  (3x3 on 28x28 -> 26x26; 3x3 on 10x10 -> 8x8)
  SAME:  ceil(size / s)                 (zero-padded so every input pixel at stride s is a centre)
  (lo, hi) explicit: floor((size + lo + hi - span) / s) + 1
"""

from collections.abc import Sequence

from research.config import is_int

Padding = str | int | Sequence[tuple[int, int]]


class ShapeError(ValueError):
  """A layer cannot be applied to its input; `field` names the module field at fault
  (e.g. `kernel_size`)."""

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(message)


def as_tuple(value: int | Sequence[int], ndim: int, field: str) -> tuple[int, ...]:
  """`value` broadcast to `ndim` ints (an int means the same on every axis); each must be >= 1."""
  values = (value,) * ndim if isinstance(value, int) else tuple(value)
  if len(values) != ndim or not all(is_int(v) for v in values):
    raise ShapeError(
      field, f"{field} must be an int or {ndim} ints for a {ndim}-d input, got {value!r}"
    )
  if min(values) < 1:
    raise ShapeError(field, f"{field} must be >= 1, got {value!r}")
  return values


def explicit_padding(padding: Padding, ndim: int) -> str | tuple[tuple[int, int], ...]:
  """`padding` as "SAME", "VALID" or `ndim` (lo, hi) pairs; an int p means (p, p) on every axis."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ShapeError(
        "padding", f"padding must be SAME, VALID, an int or (lo, hi) pairs, got {padding!r}"
      )
    return padding.upper()
  if isinstance(padding, int):
    pairs = ((padding, padding),) * ndim
  else:
    pairs = tuple(tuple(p) for p in padding)
  if len(pairs) != ndim or any(len(p) != 2 or min(p) < 0 for p in pairs):
    raise ShapeError(
      "padding", f"padding must be {ndim} non-negative (lo, hi) pairs, got {padding!r}"
    )
  return pairs


def conv_output_size(
  size: int,
  kernel: int,
  stride: int = 1,
  padding: str | tuple[int, int] = "VALID",
  dilation: int = 1,
) -> int:
  """Output length along one axis (see the module docstring);
  raises ShapeError if the kernel does not fit."""
  span = (kernel - 1) * dilation + 1
  if padding == "SAME":
    return -(-size // stride)
  lo, hi = (0, 0) if padding == "VALID" else padding
  if size + lo + hi < span:
    raise ShapeError(
      "kernel_size",
      f"a kernel spanning {span} pixels (size {kernel}, dilation {dilation}) "
      f"does not fit an input of {size} pixels with padding {padding}",
    )
  return (size + lo + hi - span) // stride + 1


def conv_output_shape(
  spatial: Sequence[int],
  kernel_size: int | Sequence[int],
  strides: int | Sequence[int] = 1,
  padding: Padding = "VALID",
  dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
  """Output spatial shape of a convolution over `spatial` (e.g. `(28, 28)`),
  in 1, 2 or 3 dimensions."""
  ndim = len(spatial)
  kernel = as_tuple(kernel_size, ndim, "kernel_size")
  stride = as_tuple(strides, ndim, "strides")
  dil = as_tuple(dilation, ndim, "dilation")
  pad = explicit_padding(padding, ndim)
  pads = (pad,) * ndim if isinstance(pad, str) else pad
  return tuple(conv_output_size(*args) for args in zip(spatial, kernel, stride, pads, dil))
