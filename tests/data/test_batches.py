"""The epoch order and the batches: what each epoch and each evaluation sees, and the batch
sizes a dataset and a device count allow."""

import numpy as np
import pytest

from research.data import batches, splits
from research.errors import ConfigError

from support import load


@pytest.mark.parametrize(
  "examples, batch, per_epoch", [(5000, 100, 50), (1437, 32, 44), (99, 100, 0), (100, 100, 1)]
)
def test_step_arithmetic_drops_the_incomplete_last_batch(examples, batch, per_epoch):
  assert batches.steps_per_epoch(examples, batch) == per_epoch


def _split(n: int) -> splits.Split:
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  return splits.Split(images=images, labels=np.arange(n, dtype=np.int32))


IDENTITY = (np.zeros(1, np.float32), np.ones(1, np.float32))


def test_train_batches_are_full_and_each_example_appears_at_most_once_per_epoch():
  epoch = list(batches.train_batches(_split(103), IDENTITY, batch_size=10, seed=0, epoch=0))
  assert len(epoch) == 10 and all(b["label"].shape == (10,) for b in epoch)
  seen = np.concatenate([b["label"] for b in epoch])
  assert len(set(seen)) == 100
  assert all(np.array_equal(b["image"].reshape(-1), b["label"].astype(np.float32)) for b in epoch)


def test_epoch_order_is_a_function_of_seed_and_epoch():
  assert np.array_equal(batches.epoch_order(3, 7, 50), batches.epoch_order(3, 7, 50))
  assert not np.array_equal(batches.epoch_order(3, 7, 50), batches.epoch_order(3, 8, 50))
  assert not np.array_equal(batches.epoch_order(3, 7, 50), batches.epoch_order(4, 7, 50))
  assert sorted(batches.epoch_order(3, 7, 50)) == list(range(50))


@pytest.mark.parametrize("n, batch, steps", [(103, 10, 10), (100, 10, 10), (7, 7, 1), (50, 8, 3)])
def test_epoch_indices_are_the_seeded_permutation_cut_into_the_plans_steps(n, batch, steps):
  # The order a run has always used: NumPy's permutation seeded with [seed, epoch].
  order = np.random.default_rng([3, 7]).permutation(n)
  got = batches.epoch_indices(3, 7, n, steps_per_epoch=steps, batch_size=batch)
  assert got.dtype == np.int32 and got.shape == (steps, batch)
  for step in range(steps):
    np.testing.assert_array_equal(got[step], order[step * batch : (step + 1) * batch])


@pytest.mark.parametrize("n, batch", [(360, 128), (360, 360), (7, 3), (5, 8)])
def test_eval_batches_cover_every_example_exactly_once(n, batch):
  evaluation = list(batches.eval_batches(_split(n), IDENTITY, batch))
  assert all(b["label"].shape == (batch,) and b["image"].shape[0] == batch for b in evaluation)
  real = np.concatenate([b["label"][b["mask"] == 1] for b in evaluation])
  assert np.array_equal(real, np.arange(n))
  assert sum(b["mask"].sum() for b in evaluation) == n


DIGITS = splits.DatasetInfo(
  name="sklearn_digits", shape=(8, 8, 1), num_classes=10, num_train=1437, num_test=360, pixel_max=16
)


@pytest.mark.parametrize(
  "batch_size, eval_batch_size, refused",
  [
    (32, 129, "data.batch_size"),  # 32 = 3 * 10 + 2.
    (33, 128, "data.eval_batch_size"),  # 33 = 3 * 11, but 128 = 3 * 42 + 2.
    (33, 129, None),  # 3 * 11 and 3 * 43.
  ],
)
def test_batch_sizes_must_divide_evenly_over_the_devices(batch_size, eval_batch_size, refused):
  # Both sizes are below the 1,437 training examples, so divisibility by the 3 devices is the only
  # thing that can be wrong; each case makes exactly one of them indivisible (or neither).
  config = load(f"data.batch_size={batch_size}", f"data.eval_batch_size={eval_batch_size}")
  if refused is None:
    batches.check(config, DIGITS, num_devices=3)
    return
  with pytest.raises(ConfigError) as e:
    batches.check(config, DIGITS, num_devices=3)
  assert e.value.key == refused and str(e.value).startswith(f"config.{refused}: ")
  assert "divisible by the 3 devices" in str(e.value)
