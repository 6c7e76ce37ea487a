"""The embedded dataset's split, the dataset's description, reading splits through TFDS's data
source contract, and the per-channel normalization."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from research import config as config_lib
from research.data import prepare, splits
from research.errors import DataError

from support import DEFAULT


@pytest.fixture(scope="module")
def embedded(data_dir):
  config = config_lib.load_config(DEFAULT)
  config.data.data_dir = data_dir
  return splits.info(config), splits.load(config)


def _rows(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
  return sorted(img.astype(np.uint8).tobytes() + bytes([lab]) for img, lab in zip(images, labels))


def test_split_is_every_fifth_example_for_test_and_the_rest_for_train(embedded):
  info, (train, test) = embedded
  digits = load_digits()
  is_test = np.arange(len(digits.target)) % 5 == 0
  assert (info.num_train, info.num_test, len(train), len(test)) == (1437, 360, 1437, 360)
  assert _rows(test.images, test.labels) == _rows(digits.images[is_test], digits.target[is_test])
  assert _rows(train.images, train.labels) == _rows(
    digits.images[~is_test], digits.target[~is_test]
  )


def test_train_and_test_share_no_example(embedded):
  _, (train, test) = embedded
  assert not set(_rows(train.images, train.labels)) & set(_rows(test.images, test.labels))


def test_dataset_info_describes_the_digits(embedded):
  info, (train, _) = embedded
  assert info.shape == (8, 8, 1) and info.num_classes == 10 and info.pixel_max == 16
  assert (
    train.images.dtype == np.uint8
    and train.images.max() == 16
    and set(train.labels) == set(range(10))
  )


def test_normalization_gives_zero_mean_unit_variance_on_train(embedded):
  info, (train, _) = embedded
  stats = splits.normalizer(train, info.pixel_max)
  x = splits.normalize(train.images, stats)
  assert x.dtype == np.float32
  np.testing.assert_allclose(x.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(), 1.0, atol=1e-4)


def _three_channels(n: int = 64, seed: int = 0) -> splits.Split:
  """uint8 images [n, 5, 4, 3] whose channels have very different means and spreads."""
  rng = np.random.default_rng(seed)
  shape = (n, 5, 4)
  channels = [
    rng.integers(0, 21, shape),  # Dark, narrow: mean ~10, std ~6.
    rng.integers(180, 256, shape),  # Bright: mean ~217, std ~22.
    rng.choice([0, 255], shape),  # Black or white: mean ~127, std ~127.
  ]
  images = np.stack(channels, axis=-1).astype(np.uint8)
  return splits.Split(images=images, labels=np.zeros(n, np.int32))


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (population) std of each channel over every pixel of every image, channel by
  channel in float64."""
  per_channel = [images[..., c].astype(np.float64).ravel() for c in range(images.shape[-1])]
  return np.array([p.mean() for p in per_channel]), np.array([p.std() for p in per_channel])


def test_normalizer_is_the_per_channel_mean_and_std_of_the_training_pixels():
  train = _three_channels()
  mean, std = splits.normalizer(train, pixel_max=255)
  expected_mean, expected_std = _channel_stats(train.images)
  # The channels differ by far more than the tolerance, so a global or mixed statistic fails.
  assert np.ptp(expected_mean) > 100 and np.ptp(expected_std) > 100
  assert mean.shape == std.shape == (3,)
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
  np.testing.assert_allclose(std, expected_std, rtol=1e-6)


def test_normalize_gives_each_channel_zero_mean_and_unit_std():
  train = _three_channels()
  x = splits.normalize(train.images, splits.normalizer(train, pixel_max=255))
  assert x.dtype == np.float32 and x.shape == train.images.shape
  mean, std = _channel_stats(x)
  np.testing.assert_allclose(mean, 0.0, atol=1e-5)
  np.testing.assert_allclose(std, 1.0, atol=1e-5)


def test_normalization_does_not_mix_channels():
  # Halving channel 2 halves its mean and std; channels 0 and 1 must keep theirs exactly.
  train = _three_channels()
  halved = train.images.copy()
  halved[..., 2] //= 2  # 0 or 255 -> 0 or 127.
  before = splits.normalizer(train, pixel_max=255)
  after = splits.normalizer(splits.Split(images=halved, labels=train.labels), pixel_max=255)
  for stat_before, stat_after in zip(before, after):
    np.testing.assert_array_equal(stat_after[:2], stat_before[:2])
    np.testing.assert_allclose(stat_after[2], stat_before[2] * 127 / 255, rtol=1e-6)
  x, y = splits.normalize(train.images, before), splits.normalize(halved, after)
  np.testing.assert_array_equal(y[..., :2], x[..., :2])


class _Documented:
  """A data source with only what TFDS documents (`__len__`, `__getitem__`), over a real one;
  `length` overrides its length, `fail_at` makes reading that index raise."""

  def __init__(self, source, length=None, fail_at=None):
    self.source, self.length, self.fail_at = source, length, fail_at

  def __len__(self):
    return len(self.source) if self.length is None else self.length

  def __getitem__(self, i):
    if i == self.fail_at:
      raise OSError("Input/output error\nsecond line")
    return self.source[i]


class _Batched(_Documented):
  """`_Documented` with TFDS's undocumented batch read too, as TFDS's own sources have it."""

  def __getitems__(self, keys):
    return [self[i] for i in keys]


@pytest.fixture
def documented_only(monkeypatch):
  """Makes every builder's data source a `_Documented` one, made with `options` (`batch`: a
  `_Batched` one)."""
  options = {}
  original = tfds.core.DatasetBuilder.as_data_source

  def as_data_source(self, split=None, **kwargs):
    kind = _Batched if options.get("batch") else _Documented
    wrapped = {k: v for k, v in options.items() if k != "batch"}
    return kind(original(self, split=split, **kwargs), **wrapped)

  monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", as_data_source)
  return options


def test_load_reads_through_the_documented_data_source_contract(make_config, documented_only):
  # Before: load called `__getitems__`, which TFDS does not promise, and failed blaming the format.
  config = make_config()
  train, test = splits.load(config)
  source = prepare.get_builder(config).as_data_source(split="train").source  # The real one.
  in_order = [source[i] for i in range(len(source))]
  np.testing.assert_array_equal(train.labels, [ex["label"] for ex in in_order])
  np.testing.assert_array_equal(train.images, np.stack([ex["image"] for ex in in_order]))
  digits = load_digits()
  is_test = np.arange(len(digits.target)) % 5 == 0
  assert (len(train), len(test)) == (1437, 360)
  assert _rows(test.images, test.labels) == _rows(digits.images[is_test], digits.target[is_test])
  assert _rows(train.images, train.labels) == _rows(
    digits.images[~is_test], digits.target[~is_test]
  )


def _load_error(config, documented_only, **failure) -> str:
  """The `DataError` line `splits.load(config)` raises with the data source failing as `failure`
  says (`documented_only`'s settings)."""
  documented_only.update(**failure)
  with pytest.raises(DataError) as e:
    splits.load(config)
  return str(e.value)


def test_a_read_error_names_split_dataset_dir_and_cause_not_the_format(
  make_config, documented_only
):
  # Before: the message said the dataset "must be prepared with --file_format=array_record".
  config = make_config()
  message = _load_error(config, documented_only, fail_at=700, batch=True)
  assert message.startswith("could not read split 'train' of dataset 'sklearn_digits' in ")
  assert config.data.data_dir in message and "(OSError: Input/output error)" in message
  assert "second line" not in message and "file_format" not in message and "\n" not in message


def test_fewer_examples_than_the_metadata_says_is_one_error_saying_to_prepare_again(
  make_config, documented_only
):
  # Before: 2 of the 1,437 training examples were read without a word; the plan (from the
  # metadata) promised 44 steps per epoch and the run trained 0 and said "Done".
  message = _load_error(make_config(), documented_only, length=2, batch=True)
  assert message.startswith("split 'train' of dataset 'sklearn_digits' in ")
  assert "has 2 examples where its metadata says 1437" in message
  assert "prepare it again: remove that directory and rerun" in message
