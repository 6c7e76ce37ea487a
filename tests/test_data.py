"""The embedded dataset's split and the batching: what each epoch and each evaluation sees."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import DEFAULT
from research import config as config_lib, data


@pytest.fixture(scope="module")
def splits(data_dir):
  config = config_lib.load_config(DEFAULT)
  config.data.data_dir = data_dir
  return data.info(config), data.load(config)


def _rows(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
  return sorted(img.astype(np.uint8).tobytes() + bytes([lab]) for img, lab in zip(images, labels))


def test_split_is_every_fifth_example_for_test_and_the_rest_for_train(splits):
  info, (train, test) = splits
  digits = load_digits()
  is_test = np.arange(len(digits.target)) % 5 == 0
  assert (info.num_train, info.num_test, len(train), len(test)) == (1437, 360, 1437, 360)
  assert _rows(test.images, test.labels) == _rows(digits.images[is_test], digits.target[is_test])
  assert _rows(train.images, train.labels) == _rows(digits.images[~is_test], digits.target[~is_test])


def test_train_and_test_share_no_example(splits):
  _, (train, test) = splits
  assert not set(_rows(train.images, train.labels)) & set(_rows(test.images, test.labels))


def test_dataset_info_describes_the_digits(splits):
  info, (train, _) = splits
  assert info.shape == (8, 8, 1) and info.num_classes == 10 and info.pixel_max == 16
  assert train.images.dtype == np.uint8 and train.images.max() == 16 and set(train.labels) == set(range(10))


@pytest.mark.parametrize("examples, batch, epochs, per_epoch, total", [
    (5000, 100, 500, 50, 25000), (1437, 32, 20, 44, 880), (99, 100, 3, 0, 0), (100, 100, 1, 1, 1)])
def test_step_arithmetic_drops_the_incomplete_last_batch(examples, batch, epochs, per_epoch, total):
  assert data.steps_per_epoch(examples, batch) == per_epoch
  assert data.total_steps(examples, batch, epochs) == total


def _split(n: int) -> data.Split:
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  return data.Split(images=images, labels=np.arange(n, dtype=np.int32))


IDENTITY = (np.zeros(1, np.float32), np.ones(1, np.float32))


def test_train_batches_are_full_and_each_example_appears_at_most_once_per_epoch():
  batches = list(data.train_batches(_split(103), IDENTITY, batch_size=10, seed=0, epoch=0))
  assert len(batches) == 10 and all(b["label"].shape == (10,) for b in batches)
  seen = np.concatenate([b["label"] for b in batches])
  assert len(set(seen)) == 100
  assert all(np.array_equal(b["image"].reshape(-1), b["label"].astype(np.float32)) for b in batches)


def test_epoch_order_is_a_function_of_seed_and_epoch():
  assert np.array_equal(data.epoch_order(3, 7, 50), data.epoch_order(3, 7, 50))
  assert not np.array_equal(data.epoch_order(3, 7, 50), data.epoch_order(3, 8, 50))
  assert not np.array_equal(data.epoch_order(3, 7, 50), data.epoch_order(4, 7, 50))
  assert sorted(data.epoch_order(3, 7, 50)) == list(range(50))


@pytest.mark.parametrize("n, batch", [(360, 128), (360, 360), (7, 3), (5, 8)])
def test_eval_batches_cover_every_example_exactly_once(n, batch):
  batches = list(data.eval_batches(_split(n), IDENTITY, batch))
  assert all(b["label"].shape == (batch,) and b["image"].shape[0] == batch for b in batches)
  real = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
  assert np.array_equal(real, np.arange(n))
  assert sum(b["mask"].sum() for b in batches) == n


def test_normalization_gives_zero_mean_unit_variance_on_train(splits):
  info, (train, _) = splits
  stats = data.normalizer(train, info.pixel_max)
  x = data.normalize(train.images, stats)
  assert x.dtype == np.float32
  np.testing.assert_allclose(x.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(), 1.0, atol=1e-4)
