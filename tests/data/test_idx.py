"""The IDX reader against files written here by hand: magic numbers, shapes, labels, bad files."""

import numpy as np
import pytest

from research.data import idx
from research.errors import DataError

from support import write_idx, write_split


def test_the_header_bytes_are_the_documented_magic_numbers(tmp_path):
  path = write_idx(tmp_path / "x", np.zeros((2, 3, 4), np.uint8), gz=False)
  assert open(path, "rb").read(16) == bytes.fromhex("00000803000000020000000300000004")
  assert idx.IMAGES_MAGIC == 0x803 and idx.LABELS_MAGIC == 0x801


@pytest.mark.parametrize("gz", [True, False])
def test_reads_back_exactly_what_was_written(tmp_path, gz):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = np.array([3, 0, 9, 1, 1], np.uint8)
  np.testing.assert_array_equal(
    idx.read(write_idx(tmp_path / "i", images, gz=gz), idx.IMAGES_MAGIC), images
  )
  np.testing.assert_array_equal(
    idx.read(write_idx(tmp_path / "l", labels, gz=gz), idx.LABELS_MAGIC), labels
  )


def test_read_split_gives_channels_last_images_and_their_labels(tmp_path):
  images = np.arange(4 * 28 * 28, dtype=np.int64).reshape(4, 28, 28) % 251
  labels = np.array([7, 2, 0, 9], np.uint8)
  write_split(tmp_path, "test", images, labels, gz=False)
  got_images, got_labels = idx.read_split(str(tmp_path), "test", (28, 28), 10, count=4)
  assert got_images.shape == (4, 28, 28, 1) and got_images.dtype == np.uint8
  np.testing.assert_array_equal(got_images[..., 0], images)
  assert got_labels.tolist() == [7, 2, 0, 9]


def test_find_takes_gzipped_or_plain_files_and_needs_both(tmp_path):
  assert idx.find(str(tmp_path), "train") is None
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 2, 2), np.uint8))
  assert idx.find(str(tmp_path), "train") is None  # No labels yet.
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((1,), np.uint8), gz=False)
  assert idx.find(str(tmp_path), "train") == (
    str(tmp_path / "train-images-idx3-ubyte.gz"),
    str(tmp_path / "train-labels-idx1-ubyte"),
  )


IMAGES = np.zeros((3, 28, 28), np.uint8)
LABELS = np.array([1, 2, 3], np.uint8)


@pytest.mark.parametrize(
  "images, labels, bad, words",
  [
    (dict(magic=0x801), {}, "images", "magic number 0x00000801 where 0x00000803"),
    ({}, dict(magic=0x803), "labels", "magic number 0x00000803 where 0x00000801"),
    (dict(cut=100), {}, "images", "truncated"),
    ({}, dict(cut=1), "labels", "truncated"),
    (dict(array=np.zeros((3, 28, 27), np.uint8)), {}, "images", "expected [n, 28, 28]"),
    ({}, dict(array=np.array([1, 2], np.uint8)), "labels", "2 labels for the 3 images"),
    ({}, dict(array=np.array([1, 2, 10], np.uint8)), "labels", "label 10, outside 0..9"),
  ],
)
def test_a_bad_file_is_one_error_naming_it(tmp_path, images, labels, bad, words):
  names = dict(zip(("images", "labels"), idx.FILES["train"]))
  paths = {
    "images": write_idx(
      tmp_path / (names["images"] + ".gz"), images.pop("array", IMAGES), **images
    ),
    "labels": write_idx(
      tmp_path / (names["labels"] + ".gz"), labels.pop("array", LABELS), **labels
    ),
  }
  with pytest.raises(DataError) as e:
    idx.read_split(str(tmp_path), "train", (28, 28), 10)
  message = str(e.value)
  assert paths[bad] in message and words in message and "\n" not in message
  assert "apt-get install" in message and "--config.data.source_dir" in message


def test_a_truncated_gzip_stream_is_one_error_naming_the_file(tmp_path):
  path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", IMAGES)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(DataError, match=f"cannot read IDX file {path} "):
    idx.read(path, idx.IMAGES_MAGIC)


def test_a_count_other_than_the_datasets_is_refused(tmp_path):
  write_split(tmp_path, "train", IMAGES, LABELS)
  with pytest.raises(DataError, match="holds 3 images where this dataset's train split has 60000"):
    idx.read_split(str(tmp_path), "train", (28, 28), 10, count=60000)


def test_missing_files_name_the_directory_and_the_remedy(tmp_path):
  with pytest.raises(DataError) as e:
    idx.read_split(str(tmp_path), "test", (28, 28), 10)
  assert str(tmp_path) in str(e.value) and "t10k-images-idx3-ubyte[.gz]" in str(e.value)
