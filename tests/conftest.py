"""Shared fixtures: a TFDS data dir with the embedded digits prepared once per session."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "experiments", "default.py")
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared `sklearn_digits` (prepared here, offline)."""
  from research import config as config_lib, data
  path = str(tmp_path_factory.mktemp("tfds"))
  config = config_lib.load_config(DEFAULT)
  config.data.data_dir = path
  data.info(config)  # Prepares the dataset.
  return path


@pytest.fixture
def make_config(data_dir):
  """`make_config("train.num_epochs=2", ...)`: the default experiment, on the session data dir, overridden."""
  from research import config as config_lib

  def make(*overrides: str, path: str = DEFAULT):
    config = config_lib.load_config(path)
    config_lib.apply_overrides(config, [f"data.data_dir={data_dir}", *overrides])
    return config

  return make


def run_cli(*args: str, cwd: str = ROOT, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
  """`python run.py ARGS` in a subprocess; stdout and stderr captured as text."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})
