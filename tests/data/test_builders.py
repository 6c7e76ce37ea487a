"""Where datasets live (the data dir) and which names TFDS can build: a malformed name is one
`ConfigError` naming `data.name`, with nothing prepared."""

import os

import pytest

from research.data import builders, splits
from research.errors import ConfigError

from support import load, run_cli


@pytest.fixture
def no_tfds_env(monkeypatch, tmp_path):
  """No $TFDS_DATA_DIR, and a HOME of our own, so `~` is known."""
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return tmp_path


def test_data_dir_is_the_configs_first_even_with_tfds_data_dir_set(no_tfds_env, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(no_tfds_env / "from_env"))
  config = load(f"data.data_dir={no_tfds_env / 'from_config'}")
  assert builders.data_dir(config) == str(no_tfds_env / "from_config")


def test_data_dir_is_tfds_data_dir_when_the_config_names_none(no_tfds_env, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(no_tfds_env / "from_env"))
  assert builders.data_dir(load()) == str(no_tfds_env / "from_env")


def test_data_dir_is_tensorflow_datasets_in_home_without_config_or_env(no_tfds_env):
  assert builders.data_dir(load()) == str(no_tfds_env / "home" / "tensorflow_datasets")


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
    splits.static_info(config)
  assert e.value.key == "data.name" and str(e.value).startswith("config.data.name: ")
  assert words in str(e.value) and "\n" not in str(e.value)
  assert not os.listdir(tmp_path)  # Nothing was prepared or downloaded.


def test_a_malformed_dataset_name_on_the_command_line_is_one_line_without_traceback(tmp_path):
  result = run_cli("data", "prepare", "mnist:9.9.9", f"--config.data.data_dir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.startswith("error: config.data.name: TFDS cannot build 'mnist:9.9.9' ")
  assert len(result.stderr.strip().splitlines()) == 1
