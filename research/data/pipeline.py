"""Input pipeline: TFDS image-classification datasets read into memory, batched as pure functions.

Every dataset, the embedded default included, is read through a TFDS builder's array_record data
source (no TensorFlow needed). The batch order is a pure function of (seed, epoch), so a resumed run
sees exactly the batches an uninterrupted run would.
"""

import dataclasses
import os
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.data.datasets import sklearn_digits
from research.errors import ConfigError, DataError

# Builders that prepare from files an installed package ships: no network, no `download` needed.
OFFLINE_BUILDERS = {"sklearn_digits": sklearn_digits.SklearnDigits}
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: `images` uint8 `[n, height, width, channels]`, `labels` int32 `[n]`."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the checks need before any data is read."""

  name: str
  shape: tuple[int, ...]  # One example: [height, width, channels].
  num_classes: int
  num_train: int
  num_test: int
  pixel_max: float  # Largest raw pixel value (16 for the digits, 255 for 8-bit images).


def data_dir(config: ml_collections.ConfigDict) -> str:
  """The TFDS data dir: `config.data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  chosen = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(chosen))


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared builder for `config.data.name`, preparing it first when that needs no network."""
  name, root = config.data.name, data_dir(config)
  if name in OFFLINE_BUILDERS:
    builder = OFFLINE_BUILDERS[name](data_dir=root, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare()
    return builder
  try:
    builder = tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(
      "data.name",
      f"{name!r} is not a TFDS dataset (nor one of this project's: {', '.join(OFFLINE_BUILDERS)})",
    ) from None
  if builder.is_prepared():
    return builder
  if not config.data.download:
    raise DataError(
      f"TFDS dataset {name!r} is not prepared in {root} and downloading is off: prepare it on a "
      f"machine with network (`tfds build {name} --file_format=array_record --data_dir={root}`, "
      "then copy that directory here), or pass --config.data.download=True where this machine "
      "has network."
    )
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as e:
    raise DataError(
      f"could not download TFDS dataset {name!r} into {root} ({type(e).__name__}: {e}); "
      f"check the network, or prepare it elsewhere with `tfds build {name}`."
    ) from None
  return builder


def _keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2 or not hasattr(builder.info.features[keys[1]], "num_classes"):
    raise ConfigError(
      "data.name", f"{builder.name!r} is not an (image, label) classification dataset"
    )
  return keys


def info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shape, classes and sizes of the configured dataset (prepares the embedded one if needed)."""
  builder = _builder(config)
  image_key, label_key = _keys(builder)
  feature = builder.info.features[image_key]
  splits = builder.info.splits
  for split in ("train", "test"):
    if split not in splits:
      raise DataError(
        f"TFDS dataset {builder.name!r} has no {split!r} split (it has: {', '.join(splits)})"
      )
  dtype = np.dtype(feature.np_dtype)
  pixel_max = (
    float(sklearn_digits.PIXEL_MAX)
    if builder.name == "sklearn_digits"
    else (float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0)
  )
  return DatasetInfo(
    name=builder.name,
    shape=tuple(feature.shape),
    num_classes=builder.info.features[label_key].num_classes,
    num_train=splits["train"].num_examples,
    num_test=splits["test"].num_examples,
    pixel_max=pixel_max,
  )


def load(config: ml_collections.ConfigDict) -> tuple[Split, Split]:
  """The (train, test) splits of the configured dataset, read whole into memory."""
  builder = _builder(config)
  image_key, label_key = _keys(builder)
  splits = []
  for split in ("train", "test"):
    try:
      source = builder.as_data_source(split=split)
      examples = source.__getitems__(range(len(source)))
    except Exception as e:
      raise DataError(
        f"could not read split {split!r} of {builder.name!r} from {builder.data_dir} "
        f"({type(e).__name__}: {e}); it must be prepared with --file_format=array_record."
      ) from None
    splits.append(
      Split(
        images=np.stack([ex[image_key] for ex in examples]),
        labels=np.asarray([ex[label_key] for ex in examples], dtype=np.int32),
      )
    )
  return splits[0], splits[1]


def normalizer(train: Split, pixel_max: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of the training images, in raw pixel units: `[channels]` each."""
  pixels = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64)
  std = pixels.std(axis=0)
  return pixels.mean(axis=0).astype(np.float32), np.maximum(std, 1e-3 * pixel_max).astype(
    np.float32
  )


def normalize(images: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """Raw pixels `[..., channels]` to float32 with zero mean and unit variance per channel."""
  mean, std = stats
  return (images.astype(np.float32) - mean) / std


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps in one epoch: the incomplete last batch is dropped."""
  return num_examples // batch_size


def total_steps(num_examples: int, batch_size: int, num_epochs: int) -> int:
  """Training steps over the whole run."""
  return steps_per_epoch(num_examples, batch_size) * num_epochs


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the training examples in `epoch` (counted from 0): a function of
  (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(split: Split, stats, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
  """The full batches of one epoch: `image` float32 `[batch, h, w, c]`, `label` int32 `[batch]`."""
  order = epoch_order(seed, epoch, len(split))
  for step in range(steps_per_epoch(len(split), batch_size)):
    idx = order[step * batch_size : (step + 1) * batch_size]
    yield {"image": normalize(split.images[idx], stats), "label": split.labels[idx]}


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
  if config.data.batch_size > dataset.num_train:
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
