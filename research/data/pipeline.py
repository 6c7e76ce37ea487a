"""Input pipeline: TFDS image-classification datasets read into memory, batched as pure functions.

Every dataset, the embedded default included, is read through a TFDS builder's array_record data
source (no TensorFlow needed). The batch order is a pure function of (seed, epoch), so a resumed run
sees exactly the batches an uninterrupted run would.

Preparing a dataset holds an exclusive lock, `<data dir>/<builder name>.prepare.lock`: runs that
share a data dir prepare each dataset once, and the others wait for it and then read it.
"""

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import requests
import tensorflow_datasets as tfds

from research.data import idx
from research.data.datasets import idx_images, sklearn_digits
from research.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "test")

# Builders that prepare from files an installed package ships: no network, no `download` needed.
OFFLINE_BUILDERS = {"sklearn_digits": sklearn_digits.SklearnDigits}
# Datasets prepared from their IDX files (`research.data.datasets.idx_images`), and where the files
# usually are when `config.data.source_dir` is not set.
IDX_BUILDERS = {
  "fashion_mnist": idx_images.FashionMnistIdx,
  "mnist": idx_images.MnistIdx,
  "kmnist": idx_images.KmnistIdx,
}
IDX_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": (), "kmnist": ()}
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
_IDX_HELP = {
  "fashion_mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`), or ",
  "mnist": "",
  "kmnist": "",
}


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


def data_dir(config: ml_collections.ConfigDict) -> str:
  """The TFDS data dir: `config.data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  chosen = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(chosen))


def source_dirs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Where the IDX files of `config.data.name` are looked for, in order."""
  chosen = config.data.get("source_dir")
  if chosen:
    return (os.path.abspath(os.path.expanduser(chosen)),)
  return IDX_DIRS.get(config.data.name, ())


def _tfds_builder(name: str, root: str) -> tfds.core.DatasetBuilder:
  """TFDS's own builder for `name` (not prepared, maybe). A name TFDS cannot build (unknown, not a
  name, a config or version the dataset lacks) is one `ConfigError` saying why."""
  # TFDS's own parser lets some odd characters through (a trailing newline).
  if not re.fullmatch(r"[\w.:/*+=,-]+", name):
    raise ConfigError("data.name", f"{name!r} is not a dataset name: {_NAME_FORMAT}")
  try:
    return tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError:
    known = ", ".join([*OFFLINE_BUILDERS, *IDX_BUILDERS])
    raise ConfigError(
      "data.name", f"{name!r} is not a TFDS dataset (nor one of this project's: {known})"
    ) from None
  # What tfds.builder raises for a name it cannot parse or a config it lacks (ValueError), a
  # version it lacks (AssertionError), unknown builder arguments (TypeError), or a builder whose
  # module needs a package that is not installed (ImportError).
  except (ValueError, AssertionError, TypeError, ImportError) as e:
    raise ConfigError("data.name", _unbuildable(name, e)) from None


_NAME_FORMAT = (
  "TFDS takes NAME, NAME/CONFIG, NAME:VERSION or NAME/CONFIG:VERSION, NAME and CONFIG of letters, "
  "digits and underscores, VERSION as 1.2.3 (`python run.py data list` lists the datasets)"
)


def _unbuildable(name: str, e: Exception) -> str:
  """Why TFDS could not build a builder for `name` (it raised `e`), in one line."""
  text = str(e).strip()
  line = text.splitlines()[0] if text else ""
  if line.startswith("Parsing builder name string"):
    return f"{name!r} is not a dataset name: {_NAME_FORMAT}"
  # TFDS prefixes the cause with the builder's arguments: 'Failed to construct dataset "mnist",
  # builder_kwargs "{...}": '.
  line = re.sub(r'^Failed to construct dataset .*?builder_kwargs ".*?": ', "", line)
  if "BuilderConfig" in line and "not found" in line:
    line = re.sub(r"\s*Here are .*$", "", line).rstrip(".")
    try:
      configs = [c.name for c in tfds.builder_cls(re.split(r"[/:]", name)[0]).BUILDER_CONFIGS]
    except Exception:  # The list is a courtesy: without it the message still says what is wrong.
      configs = None
    if configs is not None:
      line += "; " + (f"its configs: {_some(configs)}" if configs else "it has no configs")
  return f"TFDS cannot build {name!r} ({type(e).__name__}: {line})"


def _some(names: list[str], shown: int = 10) -> str:
  """`names` joined by commas, at most `shown` of them, then how many more."""
  more = f" and {len(names) - shown} more" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def get_builder(
  config: ml_collections.ConfigDict, prepare: bool = True
) -> tfds.core.DatasetBuilder:
  """The builder for `config.data.name`. With `prepare`, a prepared one, preparing it first when
  that needs no network (or when `config.data.download` allows it); without, possibly unprepared."""
  name, root = config.data.name, data_dir(config)
  if name in OFFLINE_BUILDERS:

    def make() -> tfds.core.DatasetBuilder:
      return OFFLINE_BUILDERS[name](data_dir=root, file_format="array_record")

    builder = make()
    if prepare and not builder.is_prepared():
      return _prepare_once(builder, make, root, lambda b: b.download_and_prepare())
    return builder
  if name in IDX_BUILDERS:
    builder = _tfds_builder(name, root)
    if builder.is_prepared():  # TFDS's own, prepared on a networked machine: read as it is.
      return builder
    builder = IDX_BUILDERS[name](data_dir=root, file_format="array_record")
    if builder.is_prepared() or not prepare:
      return builder
    directory = next((d for d in source_dirs(config) if idx.find(d, "train")), None)
    if directory is not None:
      return _prepare_from_idx(builder, directory, root)
    if not config.data.download:
      dirs = source_dirs(config)
      where = f"are not in {', '.join(dirs)}" if dirs else "have no usual place"
      raise DataError(
        f"dataset {name!r} is not prepared in {root}, and its IDX files "
        f"({idx.FILES['train'][0]}.gz and the three others) {where}: "
        f"{_IDX_HELP[name]}put the four files in a directory and pass "
        "--config.data.source_dir=DIR, or pass --config.data.download=True where this machine "
        "has network."
      )
    return _download(_tfds_builder(name, root), root)
  builder = _tfds_builder(name, root)
  if builder.is_prepared() or not prepare:
    return builder
  if not config.data.download:
    raise DataError(
      f"TFDS dataset {name!r} is not prepared in {root} and downloading is off: prepare it on a "
      f"machine with network (`tfds build {name} --file_format=array_record --data_dir={root}`, "
      "then copy that directory here), or pass --config.data.download=True where this machine "
      "has network."
    )
  return _download(builder, root)


@contextlib.contextmanager
def _preparing(root: str, name: str) -> Iterator[None]:
  """Holds the exclusive lock on preparing dataset `name` in the data dir `root`, waiting for
  another process that holds it. Creates `root` where it does not exist.

  The lock file is kept afterwards (an empty file; the catalog lists only directories): removing
  it could let a process that opened it before the removal and one that creates it anew hold
  "the" lock at once.
  """
  try:
    os.makedirs(root, exist_ok=True)
  except FileExistsError:
    raise DataError(
      f"the data dir {root} is a file, not a directory: pass --config.data.data_dir=DIR with a "
      "directory, or move the file."
    ) from None
  except OSError as e:
    raise DataError(
      f"the data dir {root} cannot be created ({e.strerror or e}): pass "
      "--config.data.data_dir=DIR with a directory this user can write."
    ) from None
  path = os.path.join(root, f"{name}.prepare.lock")
  try:
    lock = open(path, "a")
  except OSError as e:
    raise DataError(
      f"the data dir {root} is not a writable directory: cannot open the lock file {path} "
      f"({e.strerror or e}); pass --config.data.data_dir=DIR with a directory this user can write."
    ) from None
  with lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.info(f"waiting for another process preparing {name} in {root}")
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)  # Closing the file would release it too.


def _prepare_once(
  builder: tfds.core.DatasetBuilder,
  make: Callable[[], tfds.core.DatasetBuilder],
  root: str,
  prepare: Callable[[tfds.core.DatasetBuilder], None],
) -> tfds.core.DatasetBuilder:
  """The dataset of `builder` (found unprepared) prepared by `prepare`, unless another process did
  it first: holding the lock on preparing it, a fresh builder from `make` (a builder reads only
  what was prepared before it was made) is checked again and prepared only if it still is not.
  Returns the fresh builder."""
  with _preparing(root, builder.name):
    builder = make()
    if builder.is_prepared():
      log.info(f"Another process prepared {builder.name} in {root}: reading it from there.")
    else:
      prepare(builder)
  return builder


def _prepare_from_idx(
  builder: tfds.core.DatasetBuilder, directory: str, root: str
) -> tfds.core.DatasetBuilder:
  """Prepares `builder` from the IDX files in `directory`, once: TFDS writes into a temporary
  directory and renames it when complete, so an interrupted preparation is never read and the next
  run prepares again."""

  def prepare(builder: tfds.core.DatasetBuilder) -> None:
    log.info(f"Preparing {builder.name} from the IDX files in {directory} into "
             f"{builder.data_dir} (once; later runs read it from there).")  # fmt: skip
    started = time.perf_counter()
    config = tfds.download.DownloadConfig(manual_dir=directory)
    builder.download_and_prepare(download_config=config)
    log.info(f"Prepared {builder.name} in {time.perf_counter() - started:.1f} s.")

  kind = type(builder)
  return _prepare_once(
    builder, lambda: kind(data_dir=root, file_format="array_record"), root, prepare
  )


PROBE_SECONDS = (
  5.0  # How long one download host may take to answer before it counts as unreachable.
)


def _unreachable(builder: tfds.core.DatasetBuilder) -> str | None:
  """The first of `builder`'s download hosts (from its checksums file) that does not answer an HTTP
  HEAD within `PROBE_SECONDS`, with the reason; None when all answer or the URLs are not known.

  Any HTTP answer, an error status included, counts as reachable: only a failure to connect does
  not. Proxies set in the environment (`HTTPS_PROXY`, ...) are used, as TFDS's downloader uses them.
  Without this probe, TFDS retries an unreachable host 10 times with exponential backoff (about
  200 s) and leaves partial files behind.
  """
  urls = {}
  for url in builder.url_infos or {}:
    urls.setdefault(urllib.parse.urlsplit(url).netloc, url)
  for host, url in urls.items():
    try:
      requests.head(url, timeout=PROBE_SECONDS, allow_redirects=False).close()
    except requests.RequestException as e:
      cause = e.args[0] if e.args else e  # urllib3's MaxRetryError, whose `reason` says why.
      cause = getattr(cause, "reason", cause)
      return f"{host} could not be reached ({type(cause).__name__})"
  return None


def _download(builder: tfds.core.DatasetBuilder, root: str) -> tfds.core.DatasetBuilder:
  """`builder` downloaded and prepared into `root`, failing within seconds, with nothing written,
  when its download hosts cannot be reached; a download that fails later leaves no partial files
  (what it added under `<root>/downloads/<name>` and `<root>/<name>` is removed)."""
  name = builder.name
  unreachable = _unreachable(builder)
  if unreachable:
    raise DataError(
      f"could not download TFDS dataset {name!r}: {unreachable}; check the network (or the "
      f"proxy), or prepare it elsewhere with `tfds build {name}` and copy it into {root}."
    )

  def prepare(builder: tfds.core.DatasetBuilder) -> None:
    ours = [os.path.join(root, "downloads", name), os.path.join(root, name)]
    before = {path: _tree(path) for path in ours}
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:
      for path in ours:
        _remove_new(path, before[path])
      raise DataError(
        f"could not download TFDS dataset {name!r} into {root} ({type(e).__name__}: {e}); "
        f"check the network, or prepare it elsewhere with `tfds build {name}`."
      ) from None

  return _prepare_once(builder, lambda: _tfds_builder(name, root), root, prepare)


def _tree(path: str) -> set[str]:
  """Every file and directory under `path`, `path` included; empty when it does not exist."""
  found = {path} if os.path.exists(path) else set()
  for parent, dirs, files in os.walk(path):
    found.update(os.path.join(parent, n) for n in dirs + files)
  return found


def _remove_new(path: str, before: set[str]) -> None:
  """Removes what is under `path` now but was not in `before` (deepest first)."""
  for new in sorted(_tree(path) - before, key=len, reverse=True):
    with contextlib.suppress(OSError):
      os.rmdir(new) if os.path.isdir(new) else os.remove(new)


def prepare(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Prepares `config.data.name` into the data dir unless it is (`python run.py data prepare`)."""
  return get_builder(config)


def _keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
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


def _first_line(e: Exception) -> str:
  """`Type: message` of `e`, its first line only and at most 200 characters."""
  text = str(e).strip()
  line = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
  return line if len(line) <= 200 else line[:197] + "..."


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
  """Every example of `split`, in order; a `DataError` if it cannot be read or holds another
  number of examples than its metadata says.

  Read through TFDS's documented data-source contract (`__len__`, `__getitem__`), except that a
  source offering the batch read TFDS's own sources have (`__getitems__`, not documented) is read
  with it in one call: one example at a time costs about 140 us each to set up decompression,
  2.5 s against 11-13 s for Fashion-MNIST's 70,000 examples on 2 cores.
  """
  where = f"split {split!r} of dataset {builder.name!r} in {builder.data_dir}"
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:  # What TFDS documents for files that are not array_record.
    raise DataError(
      f"could not read {where}: it was not prepared in a random-access file format "
      f"({_first_line(e)}); remove {builder.data_dir} and prepare it again with "
      "--file_format=array_record (this project's datasets are, by `python run.py data prepare`)."
    ) from None
  except Exception as e:
    raise DataError(f"could not read {where} ({_first_line(e)}): {_REPREPARE}") from None
  try:
    indices = range(len(source))
    batch_read = getattr(source, "__getitems__", None)
    examples = list(batch_read(indices)) if batch_read else [source[i] for i in indices]
  except Exception as e:
    raise DataError(
      f"could not read {where} ({_first_line(e)}): its files may be damaged; {_REPREPARE}"
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
  for split in ("train", "test"):
    examples = _read_split(builder, split)
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


def epoch_indices(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """The example indices of each full batch of `epoch`: int32 `[steps_per_epoch, batch_size]`,
  row i the batch of the epoch's step i (the incomplete last batch is dropped)."""
  steps = steps_per_epoch(num_examples, batch_size)
  order = epoch_order(seed, epoch, num_examples)[: steps * batch_size]
  return order.astype(np.int32).reshape(steps, batch_size)


def train_batches(split: Split, stats, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
  """The full batches of one epoch: `image` float32 `[batch, h, w, c]`, `label` int32 `[batch]`.

  The training loop gathers the same batches on the device instead
  (`training.state.indexed_train_step`); this is their definition on the host."""
  for batch in epoch_indices(len(split), batch_size, seed, epoch):
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
