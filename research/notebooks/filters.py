"""Classic image filters by name, applied per channel with the project's own `nn.conv.conv`.

Every kernel is `[kernel_h, kernel_w]` and is cross-correlated (not flipped) with each channel on
its own: a depthwise `conv` (`groups = channels`). Borders are padded by half-sample symmetric
reflection (`jnp.pad(mode="symmetric")`, scipy.ndimage's `mode="reflect"`: `c b a | a b c | c b a`)
and then convolved VALID, so the output has the input's size. With that padding, for a kernel
symmetric in each axis (box, gaussian, sharpen, laplacian) and no larger than the image, the sum
over the image is exactly `sum(kernel) * sum(image)` up to float rounding (each tap that falls off
one border is mirrored back by its opposite tap): blurs and sharpen preserve the mean, the
laplacian's output has mean 0. Any kernel whose taps sum to 0
(sobel_x, sobel_y, laplacian) gives 0 everywhere on a constant image.

| name      | kernel                            | sum | shows                                   |
|-----------|-----------------------------------|-----|-----------------------------------------|
| box       | size x size, every tap 1 / size^2 | 1   | blur, variance (size^2-1)/12 px^2       |
| gaussian  | exp(-(i^2 + j^2) / (2 sigma^2))   | 1   | blur, std ~sigma px                     |
| sharpen   | [[0,-1,0],[-1,5,-1],[0,-1,0]]     | 1   | the image with edges boosted            |
| sobel_x   | [[-1,0,1],[-2,0,2],[-1,0,1]]      | 0   | d/dx, > 0 where it brightens rightwards |
| sobel_y   | sobel_x transposed                | 0   | d/dy, > 0 where it brightens downwards  |
| laplacian | [[0,1,0],[1,-4,1],[0,1,0]]        | 0   | 2nd derivative, edges: sign changes     |

The gaussian is normalised, of radius int(truncate sigma + 0.5); sharpen is identity - laplacian.
The Sobel magnitude `sqrt(sobel_x^2 + sobel_y^2)` is derived from two of them (`sobel_magnitude`).
"""

import os

import jax.numpy as jnp
import numpy as np

from research.errors import DataError, UserError, first_line
from research.nn import conv as conv_lib

SAMPLE_IMAGE = "china.jpg"  # A photograph scikit-learn ships (sklearn.datasets.load_sample_image).


def box(size: int = 3) -> jnp.ndarray:
  """`[size, size]`, every tap `1 / size^2`: the mean of the window."""
  if size < 1:
    raise ValueError(f"box size must be >= 1, got {size}")
  return jnp.full((size, size), 1.0 / size**2, jnp.float32)


def gaussian(sigma: float = 2.0, truncate: float = 4.0) -> jnp.ndarray:
  """`[2r + 1, 2r + 1]` sampled Gaussian of std `sigma` pixels, `r = int(truncate * sigma + 0.5)`,
  summing to 1.

  The outer product of the 1-D kernel scipy.ndimage.gaussian_filter uses with the same `truncate`.
  """
  if sigma <= 0:
    raise ValueError(f"gaussian sigma must be > 0, got {sigma}")
  radius = int(truncate * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  return jnp.asarray(np.outer(taps, taps), jnp.float32)


def sharpen() -> jnp.ndarray:
  """`[3, 3]` identity minus the 4-neighbour laplacian: boosts what differs from its neighbours."""
  return jnp.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], jnp.float32)


def sobel_x() -> jnp.ndarray:
  """`[3, 3]` horizontal derivative ([-1, 0, 1]) smoothed vertically ([1, 2, 1]);
  responds to vertical edges."""
  return jnp.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], jnp.float32)


def sobel_y() -> jnp.ndarray:
  """`[3, 3]` vertical derivative smoothed horizontally (sobel_x transposed);
  responds to horizontal edges."""
  return sobel_x().T


def laplacian() -> jnp.ndarray:
  """`[3, 3]` 4-neighbour laplacian: `x[i-1,j] + x[i+1,j] + x[i,j-1] + x[i,j+1] - 4 x[i,j]`."""
  return jnp.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], jnp.float32)


FILTERS = {
  "box": box,
  "gaussian": gaussian,
  "sharpen": sharpen,
  "sobel_x": sobel_x,
  "sobel_y": sobel_y,
  "laplacian": laplacian,
}


def kernel(name: str, **params) -> jnp.ndarray:
  """The `[kernel_h, kernel_w]` kernel registered as `name`, built with `params` (e.g. `sigma=2.0`).

  An unknown name is a `UserError` listing the filters there are."""
  if name not in FILTERS:
    raise UserError(f"unknown filter {name!r}; choose one of: {', '.join(sorted(FILTERS))}")
  return FILTERS[name](**params)


def apply(image: jnp.ndarray, kern: jnp.ndarray) -> jnp.ndarray:
  """`image` `[height, width, channels]` cross-correlated with `kern` `[kernel_h, kernel_w]`,
  channel by channel.

  Returns float32 `[height, width, channels]`. Borders are padded by symmetric reflection,
  `(k - 1) // 2` before and `k // 2` after along each axis (lax's SAME split), so output pixel
  (i, j) is centred on input pixel (i, j) for odd kernels. See the module docstring for what this
  padding preserves.
  """
  image = jnp.asarray(image, jnp.float32)
  kern = jnp.asarray(kern, jnp.float32)
  if image.ndim != 3 or kern.ndim != 2:
    raise ValueError(
      f"need an image [height, width, channels] and a kernel [kh, kw], got {image.shape} "
      f"and {kern.shape}"
    )
  (kh, kw), channels = kern.shape, image.shape[-1]
  padded = jnp.pad(
    image, (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)), mode="symmetric"
  )
  depthwise = jnp.broadcast_to(kern[:, :, None, None], (kh, kw, 1, channels))
  return conv_lib.conv(padded[None], depthwise, padding="VALID", groups=channels)[0]


def sobel_magnitude(image: jnp.ndarray) -> jnp.ndarray:
  """`sqrt(sobel_x^2 + sobel_y^2)` per channel, `[height, width, channels]`:
  edge strength in any direction."""
  return jnp.hypot(apply(image, sobel_x()), apply(image, sobel_y()))


# The grid, in reading order: (title, display, image -> filtered image) for each panel; `display`
# names one of `_DISPLAYS`.
PANELS = (
  ("original", "rgb", lambda im: im),
  ("box 7x7 (std 2 px)", "rgb", lambda im: apply(im, box(7))),
  ("gaussian sigma=2 px", "rgb", lambda im: apply(im, gaussian(2.0))),
  ("sharpen", "rgb", lambda im: apply(im, sharpen())),
  ("sobel x (d/dx)", "signed", lambda im: apply(im, sobel_x())),
  ("sobel y (d/dy)", "signed", lambda im: apply(im, sobel_y())),
  ("sobel magnitude", "magnitude", sobel_magnitude),
  ("laplacian", "signed", lambda im: apply(im, laplacian())),
)


def filter_outputs(image: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Each panel's title -> that filter applied to `image` `[height, width, channels]`
  (same shape)."""
  return {title: fn(image) for title, _, fn in PANELS}


def load_image(path: str | None = None) -> np.ndarray:
  """float32 `[height, width, 3]` in [0, 1]: the image at `path` (any format Pillow reads, alpha
  dropped), or scikit-learn's sample photograph `SAMPLE_IMAGE` (427 x 640) when `path` is None.

  Anything Pillow cannot read or convert (missing, a folder, empty, not an image, damaged, more
  pixels than `PIL.Image.MAX_IMAGE_PIXELS`) is a `DataError` naming the file, one line."""
  if path is None:
    from sklearn.datasets import load_sample_image

    return load_sample_image(SAMPLE_IMAGE).astype(np.float32) / 255.0
  import warnings

  from PIL import Image

  try:
    with warnings.catch_warnings():
      # Over MAX_IMAGE_PIXELS Pillow only warns (an error from twice that): refuse it here, before
      # decoding gigabytes, and keep the warning off stderr.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise DataError(
      f"could not read image {path!r} (it has more than {Image.MAX_IMAGE_PIXELS} pixels, "
      "Pillow's limit against decompression bombs); pass --image=PATH to a smaller PNG or JPEG"
    ) from None
  except (
    OSError
  ) as e:  # Missing, a directory, unreadable, or not an image (UnidentifiedImageError).
    reason = e.strerror or "not an image Pillow can read"
    raise DataError(
      f"could not read image {path!r} ({reason}); pass --image=PATH to a PNG or JPEG file, "
      "or leave --image out to use the sample photograph"
    ) from None
  except Exception as e:  # Damaged files Pillow decodes with ValueError, SyntaxError, EOFError, ...
    raise DataError(
      f"could not read image {path!r} (damaged or unsupported: {first_line(e, limit=140)}); "
      "pass --image=PATH to a PNG or JPEG file, or leave --image out to use the sample photograph"
    ) from None
  return pixels.astype(np.float32) / 255.0


def _show_rgb(ax, x: np.ndarray) -> None:
  ax.imshow(np.clip(x, 0.0, 1.0))


def _show_signed(ax, x: np.ndarray) -> None:
  """The channel mean on a diverging map centred at 0 (red > 0 > blue),
  saturating at the 99th percentile."""
  mean = x.mean(-1)
  # Saturate at the 99th percentile: a few extreme pixels would wash out the rest.
  limit = float(np.percentile(np.abs(mean), 99)) or 1.0
  ax.imshow(mean, cmap="RdBu_r", vmin=-limit, vmax=limit)


def _show_magnitude(ax, x: np.ndarray) -> None:
  """The channel mean on a grey map from 0 (black), saturating at the 99th percentile."""
  mean = x.mean(-1)
  ax.imshow(mean, cmap="gray", vmin=0.0, vmax=float(np.percentile(mean, 99)) or 1.0)


_DISPLAYS = {"rgb": _show_rgb, "signed": _show_signed, "magnitude": _show_magnitude}


def _refuse_overwriting(out_path: str, image_path: str) -> None:
  """Raises UserError if `out_path` names the file `image_path` (equal after resolving links, or
  one inode): writing the grid would overwrite the user's image."""
  same = os.path.realpath(out_path) == os.path.realpath(image_path)
  if not same:
    try:
      same = os.path.samefile(out_path, image_path)  # Hard links.
    except OSError:  # One of them does not exist (yet), or cannot be looked at.
      pass
  if same:
    raise UserError(
      f"output {out_path!r} is the input image {image_path!r}: writing it would overwrite the "
      "image; pass another --out"
    )


def _checked_output(out_path: str) -> str:
  """`out_path` made absolute, its folder created; raises UserError if it cannot be written
  there."""
  path = os.path.abspath(out_path)
  if not path.lower().endswith(".png"):
    raise UserError(f"output {out_path!r} must end in .png (the grid is written as a PNG)")
  folder = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    reason = (
      "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
    )
    raise UserError(
      f"cannot write output {out_path!r}: cannot create its folder {folder!r} ({reason})"
    ) from None
  if os.path.isdir(path) or not os.access(folder, os.W_OK):
    raise UserError(
      f"cannot write output {out_path!r}: it is a folder or its folder is not writable"
    )
  return path


def write_filter_grid(out_path: str, image_path: str | None = None) -> str:
  """Writes a labelled 2 x 4 grid of `PANELS` applied to the image at `image_path` (default: the
  sample photograph) to the PNG `out_path`; returns its absolute path. Raises UserError for an
  unreadable image, an unwritable output or an output that is the image, before any filtering."""
  from matplotlib.figure import Figure  # No pyplot: no global state.

  if image_path is not None:
    _refuse_overwriting(out_path, image_path)
  image = load_image(image_path)
  path = _checked_output(out_path)
  outputs = {title: np.asarray(x) for title, x in filter_outputs(image).items()}
  height, width = image.shape[:2]
  cols, rows = 4, -(-len(PANELS) // 4)
  fig = Figure(figsize=(4 * cols, 4 * rows * height / width + 0.6 * rows), layout="constrained")
  for ax, (title, display, _) in zip(fig.subplots(rows, cols).ravel(), PANELS):
    _DISPLAYS[display](ax, outputs[title])
    ax.set_title(title)
    ax.set_axis_off()
  fig.suptitle(
    f"classic filters, per channel, on {image_path or SAMPLE_IMAGE} ({height} x {width}); "
    "edge panels show the channel mean, red > 0 > blue"
  )
  try:
    fig.savefig(path, format="png", dpi=100)
  except OSError as e:
    raise UserError(f"cannot write output {out_path!r} ({e.strerror or e})") from None
  return path
