"""The configured dataset described, its splits read whole into memory, and their normalization.

Every dataset, the embedded default included, is read through a TFDS builder's array_record data
source (no TensorFlow needed). `info` and `load` prepare it first where that needs no network
(`research.data.prepare`); `static_info` reads only the builder's static metadata.
"""

import dataclasses

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.data.datasets import sklearn_digits
from research.data.prepare import get_builder
from research.errors import ConfigError, DataError, first_line

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: `images` uint8 `[n, height, width, channels]`, `labels` int32 `[n]`."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the checks need before any data is read.

  `num_train` and `num_test` are None where only the static metadata of an unprepared dataset is
  known (`static_info`).
  """

  name: str
  shape: tuple[int, ...]  # One example: [height, width, channels].
  num_classes: int
  num_train: int | None
  num_test: int | None
  pixel_max: float  # Largest raw pixel value (16 for the digits, 255 for 8-bit images).


def _keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
  """The (image, label) feature names of `builder`; a `ConfigError` if it has none."""
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2 or not hasattr(builder.info.features[keys[1]], "num_classes"):
    raise ConfigError(
      "data.name", f"{builder.name!r} is not an (image, label) classification dataset"
    )
  return keys


def describe_builder(builder: tfds.core.DatasetBuilder, static: bool = True) -> DatasetInfo:
  """The `DatasetInfo` of `builder`; with `static`, from its static metadata (it may be unprepared,
  and split sizes TFDS does not know then are None), else it must have a train and a test split."""
  image_key, label_key = _keys(builder)
  feature = builder.info.features[image_key]
  splits = builder.info.splits
  sizes = {split: splits[split].num_examples if split in splits else None for split in SPLITS}
  for split, known in getattr(builder, "NUM_EXAMPLES", {}).items():  # IDX datasets: known before
    sizes[split] = sizes[split] or known  # they are prepared; the prepared metadata comes first.
  if not static:
    for split in SPLITS:
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
    num_train=sizes["train"],
    num_test=sizes["test"],
    pixel_max=pixel_max,
  )


def info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shape, classes and sizes of the configured dataset, preparing it if it needs no network."""
  return describe_builder(get_builder(config), static=False)


def static_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shape and classes of the configured dataset from its builder's static metadata: nothing is
  downloaded, prepared or read (`run.py cost` and `run.py bench` need no data). The split sizes
  are None where they are not known without preparing."""
  return describe_builder(get_builder(config, prepare=False), static=True)


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """Every example of `split`, in order; a `DataError` if it cannot be read or holds another
  number of examples than its metadata says.

  Read through TFDS's documented data-source contract (`__len__`, `__getitem__`), except that a
  source offering the batch read TFDS's own sources have (`__getitems__`, not documented) is read
  with it in one call: read one at a time, each example sets up its own decompression, which
  makes reading a whole split several times slower.
  """
  where = f"split {split!r} of dataset {builder.name!r} in {builder.data_dir}"
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:  # What TFDS documents for files that are not array_record.
    raise DataError(
      f"could not read {where}: it was not prepared in a random-access file format "
      f"({first_line(e)}); remove {builder.data_dir} and prepare it again with "
      "--file_format=array_record (this project's datasets are, by `python run.py data prepare`)."
    ) from None
  except Exception as e:
    raise DataError(f"could not read {where} ({first_line(e)}): {_REPREPARE}") from None
  try:
    indices = range(len(source))
    batch_read = getattr(source, "__getitems__", None)
    examples = list(batch_read(indices)) if batch_read else [source[i] for i in indices]
  except Exception as e:
    raise DataError(
      f"could not read {where} ({first_line(e)}): its files may be damaged; {_REPREPARE}"
    ) from None
  expected = builder.info.splits[split].num_examples
  if len(examples) != expected:
    raise DataError(
      f"{where} has {len(examples)} examples where its metadata says {expected}: the prepared "
      f"files do not match their metadata; {_REPREPARE}"
    )
  return examples


_REPREPARE = (
  "prepare it again: remove that directory and rerun (a TFDS dataset that is downloaded needs "
  "--config.data.download=True, or copying again)"
)


def load(config: ml_collections.ConfigDict) -> tuple[Split, Split]:
  """The (train, test) splits of the configured dataset, read whole into memory."""
  builder = get_builder(config)
  image_key, label_key = _keys(builder)
  splits = []
  for split in SPLITS:
    examples = _read_split(builder, split)
    splits.append(
      Split(
        images=np.stack([ex[image_key] for ex in examples]),
        labels=np.asarray([ex[label_key] for ex in examples], dtype=np.int32),
      )
    )
  return splits[0], splits[1]


def normalizer(train: Split, pixel_max: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of the training images, in raw pixel units: `[channels]` each. The
  std is at least a thousandth of `pixel_max`, so a constant channel does not divide by zero."""
  pixels = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64)
  std = pixels.std(axis=0)
  return pixels.mean(axis=0).astype(np.float32), np.maximum(std, 1e-3 * pixel_max).astype(
    np.float32
  )


def normalize(images: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """Raw pixels `[..., channels]` to float32 with zero mean and unit variance per channel."""
  mean, std = stats
  return (images.astype(np.float32) - mean) / std
