"""The one convolution and its shape arithmetic, against an independent NumPy loop, SciPy and
hand counts."""

import itertools

import jax
import numpy as np
import pytest
import scipy.signal

from research.nn import conv, shapes

jax.config.update("jax_enable_x64", False)


def reference_conv(x, k, strides, padding, dilation, groups):
  """Direct-loop cross-correlation: x [b, *s, cin], k [*w, cin/groups, cout]; padding "SAME",
  "VALID" or pairs."""
  nd = k.ndim - 2
  window, size = k.shape[:nd], x.shape[1:-1]
  span = [(w - 1) * d + 1 for w, d in zip(window, dilation)]
  if padding == "VALID":
    pairs = [(0, 0)] * nd
  elif (
    padding == "SAME"
  ):  # TensorFlow's convention: output ceil(n / s); the odd pixel of padding goes last.
    pairs = []
    for n, s, sp in zip(size, strides, span):
      total = max((-(-n // s) - 1) * s + sp - n, 0)
      pairs.append((total // 2, total - total // 2))
  else:
    pairs = padding
  x = np.pad(x, [(0, 0), *pairs, (0, 0)])
  out_size = [(x.shape[1 + i] - span[i]) // strides[i] + 1 for i in range(nd)]
  cin_g, cout_g = k.shape[-2], k.shape[-1] // groups
  out = np.zeros((x.shape[0], *out_size, k.shape[-1]))
  for idx in itertools.product(*map(range, out_size)):
    sl = tuple(slice(o * s, o * s + sp, d) for o, s, sp, d in zip(idx, strides, span, dilation))
    patch = x[(slice(None), *sl)]
    for g in range(groups):
      xs = patch[..., g * cin_g : (g + 1) * cin_g]
      ks = k[..., g * cout_g : (g + 1) * cout_g]
      out[(slice(None), *idx, slice(g * cout_g, (g + 1) * cout_g))] = np.tensordot(
        xs, ks, axes=(list(range(1, nd + 2)), list(range(nd + 1)))
      )
  return out


CASES = [  # (spatial, window, strides, padding, dilation, groups)
  ((11,), (3,), (1,), "VALID", (1,), 1),
  ((12,), (5,), (2,), "SAME", (1,), 1),
  ((13,), (3,), (1,), ((2, 1),), (3,), 2),
  ((9, 10), (3, 3), (1, 1), "VALID", (1, 1), 1),
  ((9, 10), (3, 3), (2, 2), "SAME", (1, 1), 1),
  ((10, 9), (3, 2), (2, 1), "SAME", (2, 1), 2),
  ((8, 8), (5, 5), (1, 1), ((2, 2), (0, 3)), (1, 1), 2),
  ((7, 7), (3, 1), (1, 1), "SAME", (1, 1), 1),
  ((6, 5, 7), (3, 3, 3), (1, 1, 1), "VALID", (1, 1, 1), 1),
  ((6, 6, 6), (3, 2, 3), (2, 1, 2), "SAME", (1, 2, 1), 2),
]


@pytest.mark.parametrize("spatial, window, strides, padding, dilation, groups", CASES)
def test_conv_equals_direct_loop_reference(spatial, window, strides, padding, dilation, groups):
  rng = np.random.default_rng(0)
  cin, cout = 4, 6
  x = rng.normal(size=(2, *spatial, cin)).astype(np.float32)
  k = rng.normal(size=(*window, cin // groups, cout)).astype(np.float32)
  got = np.asarray(
    conv.conv(x, k, strides=strides, padding=padding, dilation=dilation, groups=groups)
  )
  want = reference_conv(
    x.astype(np.float64), k.astype(np.float64), strides, padding, dilation, groups
  )
  assert got.shape == want.shape
  assert got.shape[1:-1] == shapes.conv_output_shape(spatial, window, strides, padding, dilation)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode, padding", [("valid", "VALID"), ("full", ((2, 2), (3, 3)))])
def test_conv_2d_equals_scipy_correlate(mode, padding):
  rng = np.random.default_rng(1)
  x, k = rng.normal(size=(9, 11)), rng.normal(size=(3, 4))
  got = conv.conv(
    x[None, :, :, None].astype(np.float32), k[:, :, None, None].astype(np.float32), padding=padding
  )
  np.testing.assert_allclose(
    np.asarray(got)[0, :, :, 0], scipy.signal.correlate(x, k, mode=mode), rtol=1e-4, atol=1e-4
  )


def test_conv_equals_lax_conv_general_dilated_in_nchw():
  rng = np.random.default_rng(2)
  x, k = (
    rng.normal(size=(2, 10, 10, 3)).astype(np.float32),
    rng.normal(size=(3, 3, 3, 5)).astype(np.float32),
  )
  want = jax.lax.conv_general_dilated(
    x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), (2, 1), [(1, 1), (0, 2)], rhs_dilation=(1, 2)
  )  # Default NCHW / OIHW layout.
  got = conv.conv(x, k, strides=(2, 1), padding=((1, 1), (0, 2)), dilation=(1, 2))
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(want).transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("n, m", [(1, 1), (5, 3), (3, 7), (16, 16)])
def test_conv1d_full_equals_numpy_convolve(n, m):
  rng = np.random.default_rng(n * 100 + m)
  a, b = rng.normal(size=n), rng.normal(size=m)
  np.testing.assert_allclose(
    np.asarray(conv.conv1d_full(a, b)), np.convolve(a, b), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  "spatial, kernel, strides, padding, dilation, want",
  [
    ((28, 28), 3, 1, "VALID", 1, (26, 26)),
    ((10, 10), 3, 1, "VALID", 1, (8, 8)),
    ((28, 28), 3, 1, "SAME", 1, (28, 28)),
    ((28, 28), 3, 2, "SAME", 1, (14, 14)),
    ((27,), 3, 2, "SAME", 1, (14,)),
    ((28, 28), 5, 2, "VALID", 1, (12, 12)),
    ((28, 28), 3, 1, "VALID", 2, (24, 24)),
    ((28, 28), 3, 1, 1, 1, (28, 28)),
    ((8, 9, 10), (3, 1, 5), (1, 1, 2), "VALID", 1, (6, 9, 3)),
    ((100, 100), 1, 1, "VALID", 1, (100, 100)),
  ],
)
def test_output_shape_by_hand(spatial, kernel, strides, padding, dilation, want):
  assert shapes.conv_output_shape(spatial, kernel, strides, padding, dilation) == want


@pytest.mark.parametrize(
  "args, field",
  [
    (((8, 8), 9, 1, "VALID", 1), "kernel_size"),
    (((8, 8), 3, 1, "VALID", 4), "kernel_size"),  # Dilation 4 spans 9 pixels.
    (((8, 8), 0, 1, "VALID", 1), "kernel_size"),
    (((8, 8), 3, 0, "VALID", 1), "strides"),
    (((8, 8), (3, 3, 3), 1, "VALID", 1), "kernel_size"),
    (((8, 8), 3, 1, "FULL", 1), "padding"),
    (((8, 8), 3, 1, ((1, -1), (0, 0)), 1), "padding"),
  ],
)
def test_impossible_shapes_name_the_field(args, field):
  with pytest.raises(shapes.ShapeError) as e:
    shapes.conv_output_shape(*args)
  assert e.value.field == field


def test_kernel_larger_than_valid_input_fails_before_lax():
  with pytest.raises(shapes.ShapeError, match="does not fit"):
    conv.conv(np.zeros((1, 4, 4, 1), np.float32), np.zeros((5, 5, 1, 1), np.float32))


def test_groups_must_divide_both_channel_counts():
  with pytest.raises(shapes.ShapeError) as e:
    conv.conv(np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 1, 1, 6), np.float32), groups=4)
  assert e.value.field == "groups"
