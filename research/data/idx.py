"""The IDX format of MNIST, Fashion-MNIST and KMNIST: read and checked with NumPy.

An IDX file (http://yann.lecun.com/exdb/mnist/) is a big-endian header, then the data:
  bytes 0-1  zero
  byte  2    element type: 0x08 unsigned byte (the only one these datasets use)
  byte  3    number of dimensions d (3 for images [n, rows, cols], 1 for labels [n])
  then d big-endian uint32 sizes, then prod(sizes) elements, row-major.
The magic numbers are therefore 0x00000803 (images) and 0x00000801 (labels). A file may be gzipped
(as distributed, `.gz`; recognised by its own magic bytes) or not. Every check names the file: a
wrong magic, a truncated or overlong body, images of an unexpected size, a label out of range,
or image and label counts that differ.
"""

import gzip
import os

import numpy as np

from research.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
# The four files of each split, as the datasets name them (`.gz` or not).
FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read(path: str, magic: int) -> np.ndarray:
  """The uint8 array in IDX file `path` (gzipped or not), whose magic number must be `magic`."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == GZIP_MAGIC:  # Gzipped whatever the file's name says.
      data = gzip.decompress(data)
  except (OSError, EOFError) as e:  # gzip raises these for a truncated or corrupt stream.
    raise DataError(f"cannot read IDX file {path} ({e}); {_REMEDY}") from None
  if len(data) < 4:
    raise DataError(f"IDX file {path} is {len(data)} bytes, too short for a header; {_REMEDY}")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise DataError(
      f"IDX file {path} has magic number 0x{found:08x} where 0x{magic:08x} belongs "
      f"({'images' if magic == IMAGES_MAGIC else 'labels'}); {_REMEDY}"
    )
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"IDX file {path} is truncated inside its header; {_REMEDY}")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(data) != expected:
    raise DataError(
      f"IDX file {path} holds {len(data) - header} data bytes where its header {list(shape)} "
      f"says {expected - header} ({'truncated' if len(data) < expected else 'overlong'}); {_REMEDY}"
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


_REMEDY = (
  "replace it: `apt-get install --reinstall dataset-fashion-mnist` for Fashion-MNIST, or fetch "
  "the four *-ubyte.gz files on a machine with network and point --config.data.source_dir at them"
)


def find(directory: str, split: str) -> tuple[str, str] | None:
  """(images, labels) paths of `split` in `directory`, each `.gz` or not; None if one is missing."""
  paths = []
  for stem in FILES[split]:
    for name in (stem + ".gz", stem):
      if os.path.isfile(os.path.join(directory, name)):
        paths.append(os.path.join(directory, name))
        break
    else:
      return None
  return paths[0], paths[1]


def read_split(
  directory: str, split: str, shape: tuple[int, int], num_classes: int, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 `[n, rows, cols, 1]`, labels int64 `[n]`) of `split` from the IDX files in
  `directory`, checked: images of `shape`, labels below `num_classes`, equal counts (and `count`,
  if given)."""
  found = find(directory, split)
  if found is None:
    names = " and ".join(f"{stem}[.gz]" for stem in FILES[split])
    raise DataError(f"no {names} in {directory}; {_REMEDY}")
  images_path, labels_path = found
  images, labels = read(images_path, IMAGES_MAGIC), read(labels_path, LABELS_MAGIC)
  if images.ndim != 3 or images.shape[1:] != tuple(shape):
    raise DataError(
      f"IDX file {images_path} holds images of shape {list(images.shape)}; expected "
      f"[n, {shape[0]}, {shape[1]}]; {_REMEDY}"
    )
  if labels.ndim != 1 or len(labels) != len(images):
    raise DataError(
      f"IDX file {labels_path} holds {len(labels)} labels for the {len(images)} images of "
      f"{images_path}; {_REMEDY}"
    )
  if count is not None and len(images) != count:
    raise DataError(
      f"IDX file {images_path} holds {len(images)} images where this dataset's {split} split has "
      f"{count}; {_REMEDY}"
    )
  if len(labels) and labels.max() >= num_classes:
    raise DataError(
      f"IDX file {labels_path} has label {labels.max()}, outside 0..{num_classes - 1}; {_REMEDY}"
    )
  return images[..., None], labels.astype(np.int64)
