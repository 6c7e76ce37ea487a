"""Classic filters and 1-D convolution, against scipy and numpy; `run.py filters` end to end."""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, signal

from research.errors import DataError, UserError
from research.nn import conv
from research.notebooks import filters

from support import run_cli


def _random_image(height=23, width=31, channels=3, seed=0):
  return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def _mean(image):
  """Per-channel mean `[channels]`, accumulated in float64 (a float32 sum over 273k pixels
  drifts by 1e-4)."""
  return np.mean(np.asarray(image), axis=(0, 1), dtype=np.float64)


def _per_channel(fn, image):
  return np.stack([fn(image[..., c]) for c in range(image.shape[-1])], axis=-1)


@pytest.mark.parametrize("name", sorted(filters.FILTERS))
def test_each_filter_is_a_per_channel_cross_correlation_with_symmetric_borders(name):
  image, kern = _random_image(), np.asarray(filters.kernel(name))
  expected = _per_channel(
    lambda x: signal.correlate2d(x, kern, mode="same", boundary="symm"), image
  )
  np.testing.assert_allclose(filters.apply(image, kern), expected, atol=1e-5)


@pytest.mark.parametrize(
  "name, reference",
  [
    ("box", lambda x: ndimage.uniform_filter(x, size=3, mode="reflect")),
    ("gaussian", lambda x: ndimage.gaussian_filter(x, sigma=2.0, truncate=4.0, mode="reflect")),
    ("sharpen", lambda x: x - ndimage.laplace(x, mode="reflect")),
    ("sobel_x", lambda x: ndimage.sobel(x, axis=1, mode="reflect")),
    ("sobel_y", lambda x: ndimage.sobel(x, axis=0, mode="reflect")),
    ("laplacian", lambda x: ndimage.laplace(x, mode="reflect")),
  ],
)
def test_each_kernel_is_the_textbook_one_as_scipy_ndimage_builds_it(name, reference):
  image = _random_image(seed=1)
  np.testing.assert_allclose(
    filters.apply(image, filters.kernel(name)), _per_channel(reference, image), atol=1e-5
  )


def test_sobel_magnitude_is_the_hypotenuse_of_scipys_sobel_x_and_y():
  image = _random_image(seed=2)
  expected = _per_channel(
    lambda x: np.hypot(ndimage.sobel(x, axis=1), ndimage.sobel(x, axis=0)), image
  )
  np.testing.assert_allclose(filters.sobel_magnitude(image), expected, atol=1e-5)


@pytest.mark.parametrize(
  "kern",
  [filters.box(3), filters.box(7), filters.gaussian(1.5), filters.sharpen()],
  ids=["box3", "box7", "gaussian1.5", "sharpen"],
)
def test_blurs_and_sharpen_preserve_the_mean_exactly_with_symmetric_borders(kern):
  # Symmetric padding and a kernel symmetric in each axis: every pixel's weight lost at one border
  # comes back at the mirrored tap, so sum(output) = sum(kernel) * sum(image) = sum(image).
  image = _random_image(seed=3)
  np.testing.assert_allclose(_mean(filters.apply(image, kern)), _mean(image), rtol=1e-5)


def test_laplacian_output_has_mean_zero_with_symmetric_borders():
  out = filters.apply(_random_image(seed=4), filters.laplacian())
  np.testing.assert_allclose(_mean(out), 0.0, atol=1e-6)
  assert np.abs(out).max() > 0.5  # Not trivially zero.


@pytest.mark.parametrize("name", ["sobel_x", "sobel_y", "laplacian"])
@pytest.mark.parametrize("value", [0.5, 0.7])
def test_edge_kernels_give_zero_everywhere_on_a_constant_image(name, value):
  image = np.full((9, 12, 3), value, np.float32)
  np.testing.assert_allclose(filters.apply(image, filters.kernel(name)), 0.0, atol=1e-6)


def test_sobel_x_responds_to_a_vertical_edge_and_not_to_a_horizontal_one():
  vertical = np.zeros((8, 10, 1), np.float32)
  vertical[:, 5:] = 1.0  # Brightens to the right between columns 4 and 5.
  horizontal = np.transpose(vertical, (1, 0, 2))
  sx_vertical = np.asarray(filters.apply(vertical, filters.sobel_x()))[..., 0]
  expected = np.zeros((8, 10), np.float32)
  expected[:, 4:6] = 4.0  # (1 + 2 + 1) * (1 - 0) on both sides of the step, positive: d/dx > 0.
  np.testing.assert_allclose(sx_vertical, expected, atol=1e-6)
  np.testing.assert_allclose(filters.apply(horizontal, filters.sobel_x()), 0.0, atol=1e-6)
  np.testing.assert_allclose(filters.apply(vertical, filters.sobel_y()), 0.0, atol=1e-6)


def test_an_unknown_filter_name_lists_the_choices():
  with pytest.raises(UserError, match="unknown filter 'gausian'.*gaussian"):
    filters.kernel("gausian")


def test_the_sample_photo_loads_and_its_blurs_keep_the_mean_and_smooth_the_edges():
  image = filters.load_image()
  assert (
    image.shape == (427, 640, 3)
    and image.dtype == np.float32
    and 0.0 <= image.min() < image.max() <= 1.0
  )
  out = {title: np.asarray(x) for title, x in filters.filter_outputs(image).items()}
  assert list(out) == [title for title, _, _ in filters.PANELS]
  assert all(x.shape == image.shape for x in out.values())
  for blurred in ("box 7x7 (std 2 px)", "gaussian sigma=2 px", "sharpen"):
    np.testing.assert_allclose(_mean(out[blurred]), _mean(image), rtol=1e-5)
  np.testing.assert_allclose(_mean(out["laplacian"]), 0.0, atol=1e-6)
  edges = filters.sobel_magnitude
  for blurred in ("box 7x7 (std 2 px)", "gaussian sigma=2 px"):
    assert np.mean(edges(out[blurred])) < 0.5 * np.mean(out["sobel magnitude"])
  assert np.mean(edges(out["sharpen"])) > 1.5 * np.mean(out["sobel magnitude"])


def test_a_user_image_loads_as_rgb_in_zero_one(tmp_path):
  gray = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7) * 3
  Image.fromarray(gray).save(tmp_path / "gray.png")
  image = filters.load_image(str(tmp_path / "gray.png"))
  np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=-1) / np.float32(255))


def test_an_unwritable_output_is_a_user_error_naming_it(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match="file/grid.png"):
    filters.write_filter_grid(str(tmp_path / "file" / "grid.png"))
  with pytest.raises(UserError, match="grid.jpg"):
    filters.write_filter_grid(str(tmp_path / "grid.jpg"))


@pytest.mark.parametrize(
  "len_a, len_b", [(1, 1), (5, 3), (3, 5), (16, 1), (1, 9), (40, 7), (17, 17)]
)
def test_conv1d_full_equals_numpy_convolve(len_a, len_b):
  rng = np.random.default_rng(len_a * 100 + len_b)
  a, b = rng.standard_normal(len_a), rng.standard_normal(len_b)
  np.testing.assert_allclose(conv.conv1d_full(a, b), np.convolve(a, b), rtol=1e-5, atol=1e-5)


def test_conv1d_full_flips_the_kernel_as_the_textbook_convolution_does():
  np.testing.assert_allclose(
    conv.conv1d_full([1.0, 2.0, 3.0], [0.0, 1.0, 0.5]), [0.0, 1.0, 2.5, 4.0, 1.5]
  )


def test_cli_writes_the_filter_grid_png(tmp_path):
  out = tmp_path / "grids" / "x.png"
  result = run_cli("filters", f"--out={out}", timeout=120)
  assert result.returncode == 0, result.stderr
  assert str(out) in result.stdout
  with Image.open(out) as png:
    assert png.format == "PNG" and png.width >= 1200 and 400 <= png.height < png.width


def test_cli_reports_a_missing_image_in_one_line_with_exit_code_2(tmp_path):
  out = tmp_path / "x.png"
  result = run_cli("filters", f"--image={tmp_path / 'nope.jpg'}", f"--out={out}", timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "nope.jpg" in result.stderr and "Traceback" not in result.stderr
  assert not out.exists()


def _chunk(kind: bytes, data: bytes) -> bytes:
  """One PNG chunk: length, type, data, CRC-32 of type and data."""
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
  """A PNG that only declares its size (8-bit RGB) and holds no pixels: a few dozen bytes."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


def _png_with_short_idat() -> bytes:
  """A valid 16 x 16 PNG whose IDAT length is halved: Pillow opens it, then its decoder meets a
  chunk header inside the pixel data (SyntaxError: broken PNG file)."""
  pixels = (np.arange(16 * 16 * 3).reshape(16, 16, 3) % 256).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  data = bytearray(buffer.getvalue())
  at = data.find(b"IDAT") - 4
  data[at : at + 4] = struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] // 2)
  return bytes(data)


# Files Pillow refuses, by content: (bytes, words the error shows). Before they were a DataError,
# the non-OSError ones escaped as tracebacks.
BAD_IMAGES = {
  # 4e8 pixels: DecompressionBombError. 1e8: over Image.MAX_IMAGE_PIXELS, Pillow only warns (on
  # stderr), then decodes it all. Both are refused by that limit.
  "bomb.png": (_png_header(20_000, 20_000), f"more than {Image.MAX_IMAGE_PIXELS} pixels"),
  "big.png": (_png_header(10_000, 10_000), f"more than {Image.MAX_IMAGE_PIXELS} pixels"),
  "no_pixels.qoi": (b"qoif" + struct.pack(">II", 4, 4) + bytes([3, 0]), "ValueError"),
  "short_ihdr.png": (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\0\0\0\2"), "ValueError"),
  "broken.png": (_png_with_short_idat(), "SyntaxError"),
  "empty.png": (b"", "not an image"),
  "text.png": (b"a photo, honestly\n", "not an image"),
}


def _write_image(folder, name) -> str:
  path = folder / name
  path.write_bytes(BAD_IMAGES[name][0])
  return str(path)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_an_image_pillow_refuses_is_a_data_error_naming_it(tmp_path, name):
  path = _write_image(tmp_path, name)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with pytest.raises(DataError) as e:
      filters.load_image(path)
  assert repr(path) in str(e.value) and BAD_IMAGES[name][1] in str(e.value)
  assert "\n" not in str(e.value)
  assert not caught  # Pillow's own warning would be a second line on stderr.


def test_a_folder_as_the_image_is_a_data_error_naming_it(tmp_path):
  with pytest.raises(DataError, match="Is a directory"):
    filters.load_image(str(tmp_path))


@pytest.mark.parametrize("name", ["bomb.png", "big.png", "no_pixels.qoi", "broken.png"])
def test_cli_reports_an_image_pillow_refuses_in_one_line_and_writes_nothing(tmp_path, name):
  path, out = _write_image(tmp_path, name), tmp_path / "new" / "grid.png"
  result = run_cli("filters", f"--image={path}", f"--out={out}", timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert path in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "new").exists()


def _photo(folder) -> str:
  path = folder / "photo.png"
  Image.fromarray(np.arange(12 * 7 * 3, dtype=np.uint8).reshape(12, 7, 3)).save(path)
  return str(path)


@pytest.mark.parametrize("how", ["same", "relative", "dotted", "symlink", "hardlink"])
def test_an_output_that_is_the_input_image_is_refused_before_anything_is_written(
  tmp_path, monkeypatch, how
):
  image = _photo(tmp_path)
  before = open(image, "rb").read()
  monkeypatch.chdir(tmp_path)
  out = {
    "same": image,
    "relative": "photo.png",
    "dotted": str(tmp_path / "sub" / ".." / "photo.png"),
    "symlink": str(tmp_path / "link.png"),
    "hardlink": str(tmp_path / "hard.png"),
  }[how]
  (tmp_path / "sub").mkdir()
  if how == "symlink":
    os.symlink(image, out)
  if how == "hardlink":
    os.link(image, out)
  with pytest.raises(UserError, match="is the input image"):
    filters.write_filter_grid(out, image)
  assert open(image, "rb").read() == before


def test_cli_refuses_an_output_that_is_the_input_image_in_one_line(tmp_path):
  image = _photo(tmp_path)
  before = open(image, "rb").read()
  result = run_cli("filters", f"--image={image}", f"--out={image}", timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "is the input image" in result.stderr and "Traceback" not in result.stderr
  assert open(image, "rb").read() == before


def test_another_output_beside_the_input_image_is_written(tmp_path):
  image = _photo(tmp_path)
  assert filters.write_filter_grid(str(tmp_path / "grid.png"), image) == str(tmp_path / "grid.png")
  with Image.open(tmp_path / "grid.png") as png:
    assert png.format == "PNG"


def test_an_output_folder_that_is_not_writable_is_a_user_error_naming_it(tmp_path, monkeypatch):
  # Tests may run as root, for whom every folder is writable: os.access says what a user would see.
  real_access = os.access
  monkeypatch.setattr(
    filters.os, "access", lambda p, mode: False if p == str(tmp_path) else real_access(p, mode)
  )
  with pytest.raises(UserError, match="grid.png.*not writable"):
    filters.write_filter_grid(str(tmp_path / "grid.png"))
  assert not (tmp_path / "grid.png").exists()


def test_cli_reports_an_output_folder_that_cannot_be_created_in_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  out = tmp_path / "file" / "sub" / "grid.png"
  result = run_cli("filters", f"--out={out}", timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert str(out) in result.stderr and "Traceback" not in result.stderr
