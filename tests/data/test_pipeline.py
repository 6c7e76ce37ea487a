"""The embedded dataset's split and the batching: what each epoch and each evaluation sees."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from research import config as config_lib
from research.data import pipeline as data
from research.errors import ConfigError, DataError

from support import DEFAULT, load, run_cli


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
  assert _rows(train.images, train.labels) == _rows(
    digits.images[~is_test], digits.target[~is_test]
  )


def test_train_and_test_share_no_example(splits):
  _, (train, test) = splits
  assert not set(_rows(train.images, train.labels)) & set(_rows(test.images, test.labels))


def test_dataset_info_describes_the_digits(splits):
  info, (train, _) = splits
  assert info.shape == (8, 8, 1) and info.num_classes == 10 and info.pixel_max == 16
  assert (
    train.images.dtype == np.uint8
    and train.images.max() == 16
    and set(train.labels) == set(range(10))
  )


@pytest.mark.parametrize(
  "examples, batch, epochs, per_epoch, total",
  [(5000, 100, 500, 50, 25000), (1437, 32, 20, 44, 880), (99, 100, 3, 0, 0), (100, 100, 1, 1, 1)],
)
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


DIGITS = data.DatasetInfo(
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
    data.check(config, DIGITS, num_devices=3)
    return
  with pytest.raises(ConfigError) as e:
    data.check(config, DIGITS, num_devices=3)
  assert e.value.key == refused and str(e.value).startswith(f"config.{refused}: ")
  assert "divisible by the 3 devices" in str(e.value)


def _three_channels(n: int = 64, seed: int = 0) -> data.Split:
  """uint8 images [n, 5, 4, 3] whose channels have very different means and spreads."""
  rng = np.random.default_rng(seed)
  shape = (n, 5, 4)
  channels = [
    rng.integers(0, 21, shape),  # Dark, narrow: mean ~10, std ~6.
    rng.integers(180, 256, shape),  # Bright: mean ~217, std ~22.
    rng.choice([0, 255], shape),  # Black or white: mean ~127, std ~127.
  ]
  images = np.stack(channels, axis=-1).astype(np.uint8)
  return data.Split(images=images, labels=np.zeros(n, np.int32))


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (population) std of each channel over every pixel of every image, channel by
  channel in float64."""
  per_channel = [images[..., c].astype(np.float64).ravel() for c in range(images.shape[-1])]
  return np.array([p.mean() for p in per_channel]), np.array([p.std() for p in per_channel])


def test_normalizer_is_the_per_channel_mean_and_std_of_the_training_pixels():
  train = _three_channels()
  mean, std = data.normalizer(train, pixel_max=255)
  expected_mean, expected_std = _channel_stats(train.images)
  # The channels differ by far more than the tolerance, so a global or mixed statistic fails.
  assert np.ptp(expected_mean) > 100 and np.ptp(expected_std) > 100
  assert mean.shape == std.shape == (3,)
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
  np.testing.assert_allclose(std, expected_std, rtol=1e-6)


def test_normalize_gives_each_channel_zero_mean_and_unit_std():
  train = _three_channels()
  x = data.normalize(train.images, data.normalizer(train, pixel_max=255))
  assert x.dtype == np.float32 and x.shape == train.images.shape
  mean, std = _channel_stats(x)
  np.testing.assert_allclose(mean, 0.0, atol=1e-5)
  np.testing.assert_allclose(std, 1.0, atol=1e-5)


def test_normalization_does_not_mix_channels():
  # Halving channel 2 halves its mean and std; channels 0 and 1 must keep theirs exactly.
  train = _three_channels()
  halved = train.images.copy()
  halved[..., 2] //= 2  # 0 or 255 -> 0 or 127.
  before = data.normalizer(train, pixel_max=255)
  after = data.normalizer(data.Split(images=halved, labels=train.labels), pixel_max=255)
  for stat_before, stat_after in zip(before, after):
    np.testing.assert_array_equal(stat_after[:2], stat_before[:2])
    np.testing.assert_allclose(stat_after[2], stat_before[2] * 127 / 255, rtol=1e-6)
  x, y = data.normalize(train.images, before), data.normalize(halved, after)
  np.testing.assert_array_equal(y[..., :2], x[..., :2])


@pytest.fixture
def no_tfds_env(monkeypatch, tmp_path):
  """No $TFDS_DATA_DIR, and a HOME of our own, so `~` is known."""
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return tmp_path


def test_data_dir_is_the_configs_first_even_with_tfds_data_dir_set(no_tfds_env, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(no_tfds_env / "from_env"))
  config = load(f"data.data_dir={no_tfds_env / 'from_config'}")
  assert data.data_dir(config) == str(no_tfds_env / "from_config")


def test_data_dir_is_tfds_data_dir_when_the_config_names_none(no_tfds_env, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(no_tfds_env / "from_env"))
  assert data.data_dir(load()) == str(no_tfds_env / "from_env")


def test_data_dir_is_tensorflow_datasets_in_home_without_config_or_env(no_tfds_env):
  assert data.data_dir(load()) == str(no_tfds_env / "home" / "tensorflow_datasets")


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
  train, test = data.load(config)
  source = data.get_builder(config).as_data_source(split="train").source  # The real one.
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


def test_a_read_error_names_split_dataset_dir_and_cause_not_the_format(
  make_config, documented_only
):
  # Before: the message said the dataset "must be prepared with --file_format=array_record".
  config = make_config()
  documented_only.update(fail_at=700, batch=True)
  with pytest.raises(DataError) as e:
    data.load(config)
  message = str(e.value)
  assert message.startswith("could not read split 'train' of dataset 'sklearn_digits' in ")
  assert config.data.data_dir in message and "(OSError: Input/output error)" in message
  assert "second line" not in message and "file_format" not in message and "\n" not in message


def test_fewer_examples_than_the_metadata_says_is_one_error_saying_to_prepare_again(
  make_config, documented_only
):
  # Before: 2 of the 1,437 training examples were read without a word; the plan (from the
  # metadata) promised 44 steps per epoch and the run trained 0 and said "Done".
  config = make_config()
  documented_only.update(length=2, batch=True)
  with pytest.raises(DataError) as e:
    data.load(config)
  message = str(e.value)
  assert message.startswith("split 'train' of dataset 'sklearn_digits' in ")
  assert "has 2 examples where its metadata says 1437" in message
  assert "prepare it again: remove that directory and rerun" in message


@pytest.mark.parametrize(
  "name, words",
  [
    ("mnist/nope", "TFDS cannot build 'mnist/nope' (ValueError: BuilderConfig nope not found"),
    ("mnist/nope", "; it has no configs)"),
    ("mnist:9.9.9", "(AssertionError: Dataset mnist cannot be loaded at version 9.9.9, only: "),
    ("mnist/size=3", "(TypeError: DatasetBuilder.__init__() got an unexpected keyword argument"),
    ("mnist:x.y", "'mnist:x.y' is not a dataset name: TFDS takes NAME, NAME/CONFIG"),
    ("mn ist", "'mn ist' is not a dataset name: "),
    ("mnist\n", "'mnist\\n' is not a dataset name: "),  # TFDS's own parser accepts this one.
    ("../mnist", "'../mnist' is not a dataset name: "),
    ("no_such_dataset", "'no_such_dataset' is not a TFDS dataset"),
  ],
)
def test_a_malformed_dataset_name_is_one_config_error_naming_data_name(tmp_path, name, words):
  # Before: all but the unknown name escaped as TFDS's ValueError or AssertionError, a traceback.
  config = load(f"data.data_dir={tmp_path}")
  config.data.name = name
  with pytest.raises(ConfigError) as e:
    data.static_info(config)
  assert e.value.key == "data.name" and str(e.value).startswith("config.data.name: ")
  assert words in str(e.value) and "\n" not in str(e.value)
  assert not os.listdir(tmp_path)  # Nothing was prepared or downloaded.


def test_a_malformed_dataset_name_on_the_command_line_is_one_line_without_traceback(tmp_path):
  result = run_cli("data", "prepare", "mnist:9.9.9", f"--config.data.data_dir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.startswith("error: config.data.name: TFDS cannot build 'mnist:9.9.9' ")
  assert len(result.stderr.strip().splitlines()) == 1


# A proxy on a closed port: every download fails to connect, on any machine, with or without
# network. Before: TFDS retried 10 times with exponential backoff, for more than 200 s, and left a
# partial `.tmp` download behind.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def test_download_without_network_fails_within_seconds_and_writes_nothing(tmp_path):
  root, workdir = tmp_path / "data", tmp_path / "run"
  result = run_cli(
    "train",
    "--config.data.name=cifar10",
    "--config.data.download=True",
    f"--config.data.data_dir={root}",
    f"--workdir={workdir}",
    env=NO_NETWORK,
    timeout=60,  # TFDS's own retries take 200 s: this times out if the probe is gone.
  )
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.startswith(
    "error: could not download TFDS dataset 'cifar10': www.cs.toronto.edu could not be reached "
  ), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not os.listdir(tmp_path)  # Neither the data dir nor the workdir was created.


def test_a_download_that_fails_midway_removes_only_what_it_wrote(tmp_path, monkeypatch):
  root = str(tmp_path)
  kept = tmp_path / "downloads" / "cifar10" / "earlier.tar.gz"  # A user's file from before.
  kept.parent.mkdir(parents=True)
  kept.write_bytes(b"x")
  monkeypatch.setattr(data, "_unreachable", lambda builder: None)  # As if the hosts answered.

  def partial_download(self, *args, **kwargs):
    (tmp_path / "downloads" / "cifar10" / "half.tar.gz.tmp.1234").write_bytes(b"half")
    (tmp_path / "cifar10" / "3.0.2.incomplete").mkdir(parents=True)
    raise ConnectionError("connection reset")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", partial_download)
  config = load("data.name=cifar10", "data.download=True", f"data.data_dir={root}")
  with pytest.raises(DataError, match="could not download TFDS dataset 'cifar10' into .*reset"):
    data.get_builder(config)
  left = sorted(os.path.relpath(os.path.join(p, n), root)
                for p, ds, fs in os.walk(root) for n in ds + fs)  # fmt: skip
  assert left == ["cifar10.prepare.lock", "downloads", "downloads/cifar10",
                  "downloads/cifar10/earlier.tar.gz"]  # fmt: skip
