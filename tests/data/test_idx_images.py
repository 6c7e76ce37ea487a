"""Datasets prepared from IDX files (`data.datasets.idx_images` through `data.prepare`): offline,
once, in the files' order; missing or bad files and interrupted preparations; the real
Fashion-MNIST where Debian's package is installed."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from research.data import idx, prepare, splits
from research.data.datasets import idx_images
from research.errors import DataError

from support import ROOT, load, write_idx, write_split

SMALL = {"train": 50, "test": 20}
DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
  """(config, images and labels per split): `mnist` with IDX files of 50 and 20 random images."""
  monkeypatch.setattr(idx_images.MnistIdx, "NUM_EXAMPLES", SMALL)
  rng = np.random.default_rng(1)
  source = tmp_path / "idx"
  source.mkdir()
  arrays = {}
  for split, n in SMALL.items():
    arrays[split] = (
      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
      rng.integers(0, 10, n, dtype=np.uint8),
    )
    write_split(source, split, *arrays[split])
  config = load(
    "data.name=mnist", f"data.data_dir={tmp_path / 'tfds'}", f"data.source_dir={source}"
  )
  return config, arrays


def test_prepares_once_from_the_idx_files_keeping_their_order(small_mnist, caplog):
  config, arrays = small_mnist
  info = splits.info(config)
  assert (info.name, info.shape, info.num_classes, info.num_train, info.num_test) == (
    "mnist_idx", (28, 28, 1), 10, 50, 20,
  )  # fmt: skip
  assert info.pixel_max == 255
  assert f"Preparing mnist_idx from the IDX files in {config.data.source_dir}" in caplog.text
  caplog.clear()
  train, test = splits.load(config)  # Prepared already: read, not prepared again.
  assert "Preparing" not in caplog.text
  for split, got in (("train", train), ("test", test)):
    images, labels = arrays[split]
    np.testing.assert_array_equal(got.images[..., 0], images)
    np.testing.assert_array_equal(got.labels, labels)


def test_an_interrupted_preparation_is_never_read_and_the_next_run_prepares_again(small_mnist):
  config, arrays = small_mnist
  # A real SIGKILL half-way through writing the train split (after 25 of its 50 examples).
  script = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {ROOT!r})
    from research.data import prepare
    from research.data.datasets import idx_images
    from support import load
    idx_images.MnistIdx.NUM_EXAMPLES = {SMALL!r}
    generate = idx_images.MnistIdx._generate_examples
    def dying(self, images, labels):
      for i, example in generate(self, images, labels):
        if i == 25:
          os.kill(os.getpid(), signal.SIGKILL)
        yield i, example
    idx_images.MnistIdx._generate_examples = dying
    prepare.prepare(load("data.name=mnist", "data.data_dir={config.data.data_dir}",
                         "data.source_dir={config.data.source_dir}"))
  """)
  killed = subprocess.run(
    [sys.executable, "-c", script], cwd=os.path.join(ROOT, "tests"), capture_output=True, text=True
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  leftovers = os.listdir(os.path.join(config.data.data_dir, "mnist_idx"))
  assert leftovers and all("incomplete" in name for name in leftovers)  # Nothing was committed.
  builder = prepare.get_builder(config, prepare=False)
  assert not builder.is_prepared()
  train, _ = splits.load(config)  # Prepares again, whole.
  np.testing.assert_array_equal(train.images[..., 0], arrays["train"][0])


def test_a_bad_file_is_one_error_naming_it_and_nothing_is_prepared(small_mnist):
  config, arrays = small_mnist
  labels = os.path.join(config.data.source_dir, idx.FILES["test"][1] + ".gz")
  write_idx(labels, arrays["test"][1], cut=3)
  with pytest.raises(DataError, match=f"IDX file {labels} holds 17 data bytes .*truncated"):
    splits.info(config)
  assert not prepare.get_builder(config, prepare=False).is_prepared()


@pytest.mark.parametrize(
  "name, source, words",
  [
    ("fashion_mnist", "empty", ["apt-get install dataset-fashion-mnist", "are not in {empty}"]),
    ("mnist", None, ["have no usual place", "--config.data.source_dir=DIR"]),
  ],
)
def test_missing_files_are_one_sentence_saying_what_to_do(tmp_path, name, source, words):
  empty = tmp_path / "empty"
  empty.mkdir()
  overrides = [f"data.name={name}", f"data.data_dir={tmp_path / 'tfds'}"]
  if source:
    overrides.append(f"data.source_dir={empty}")
  with pytest.raises(DataError) as e:
    splits.info(load(*overrides))
  message = str(e.value)
  assert "\n" not in message and f"{name!r} is not prepared in {tmp_path / 'tfds'}" in message
  for word in words:
    assert word.format(empty=empty) in message
  assert not (tmp_path / "tfds" / f"{name}_idx").exists()


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason=f"Debian's dataset-fashion-mnist ({DEBIAN})")
def test_the_real_fashion_mnist_has_6000_train_and_1000_test_images_per_class(tmp_path):
  config = load("data.name=fashion_mnist", f"data.data_dir={tmp_path}")
  train, test = splits.load(config)  # Prepared from the Debian files, as a user's first run does.
  assert (len(train), len(test)) == (60_000, 10_000)
  assert np.bincount(train.labels).tolist() == [6000] * 10
  assert np.bincount(test.labels).tolist() == [1000] * 10
  images, labels = idx.read_split(DEBIAN, "test", (28, 28), 10)
  np.testing.assert_array_equal(test.images, images)  # The files' order, pixel for pixel.
  np.testing.assert_array_equal(test.labels, labels)
