"""The epoch order and the batches, as pure functions of (seed, epoch).

Training drops the incomplete last batch of each epoch (`steps_per_epoch`, the one definition);
evaluation sees every test example exactly once, the last batch padded and masked. Because the
order depends on nothing but (seed, epoch), a resumed run sees exactly the batches an uninterrupted
run would.
"""

from collections.abc import Iterator

import ml_collections
import numpy as np

from research.data.splits import DatasetInfo, Split, normalize
from research.errors import ConfigError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps in one epoch: the incomplete last batch is dropped."""
  return num_examples // batch_size


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the training examples in `epoch` (counted from 0): a function of
  (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_indices(
  seed: int, epoch: int, num_examples: int, *, steps_per_epoch: int, batch_size: int
) -> np.ndarray:
  """The example indices of each full batch of `epoch`: int32 `[steps_per_epoch, batch_size]`,
  row i the batch of the epoch's step i, from `epoch_order`. `steps_per_epoch` is the plan's,
  at most `num_examples // batch_size` (the incomplete last batch is dropped)."""
  order = epoch_order(seed, epoch, num_examples)[: steps_per_epoch * batch_size]
  return order.astype(np.int32).reshape(steps_per_epoch, batch_size)


def train_batches(split: Split, stats, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
  """The full batches of one epoch: `image` float32 `[batch, h, w, c]`, `label` int32 `[batch]`;
  `stats` the training split's per-channel (mean, std) (`splits.normalizer`).

  The training loop gathers the same batches on the device instead
  (`training.state.indexed_train_step`); this is their definition on the host."""
  steps = steps_per_epoch(len(split), batch_size)
  indices = epoch_indices(seed, epoch, len(split), steps_per_epoch=steps, batch_size=batch_size)
  for batch in indices:
    yield {"image": normalize(split.images[batch], stats), "label": split.labels[batch]}


def eval_batches(split: Split, stats, batch_size: int) -> Iterator[dict]:
  """Every example exactly once, in order; the last batch is zero-padded,
  `mask` 1.0 marks real ones."""
  for start in range(0, len(split), batch_size):
    images, labels = (
      split.images[start : start + batch_size],
      split.labels[start : start + batch_size],
    )
    pad = batch_size - len(labels)
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, np.int32)])
    yield {"image": normalize(images, stats), "label": labels, "mask": mask}


def check(config: ml_collections.ConfigDict, dataset: DatasetInfo, num_devices: int) -> None:
  """Batch sizes that cannot work with this dataset or device count, as a `ConfigError`."""
  if dataset.num_train is not None and config.data.batch_size > dataset.num_train:
    raise ConfigError(
      "data.batch_size",
      f"{config.data.batch_size} is larger than the {dataset.num_train} "
      f"training examples of {dataset.name!r}",
    )
  for key in ("batch_size", "eval_batch_size"):
    if config.data[key] % num_devices:
      raise ConfigError(
        f"data.{key}",
        f"{config.data[key]} must be divisible by the {num_devices} devices "
        "the batch is split over",
      )
