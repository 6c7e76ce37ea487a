"""Shared fixtures: a TFDS data dir with the embedded digits prepared once per session, and a
temporary cache folder for the session.

Helpers that are not fixtures live in `support.py`.
"""

import os

import pytest

from support import DEFAULT, load


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory) -> str:
  """`$XDG_CACHE_HOME` for the session, in a temporary folder, never the user's `~/.cache`: every
  cache convlab keeps (compiled programs, the lowering table) goes there, for this process and the
  `run.py` subprocesses it starts. This process compiles into it too, so a program compiled by one
  test is loaded by the next (`research.compilation`)."""
  from research import compilation

  path = str(tmp_path_factory.mktemp("cache"))
  saved = {name: os.environ.get(name) for name in ("XDG_CACHE_HOME", compilation.ENV)}
  os.environ["XDG_CACHE_HOME"] = path
  os.environ.pop(compilation.ENV, None)
  compilation.enable_cache()
  yield path
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared `sklearn_digits` (prepared here, offline)."""
  from research.data import splits

  path = str(tmp_path_factory.mktemp("tfds"))
  splits.info(load(f"data.data_dir={path}"))  # Prepares the dataset.
  return path


@pytest.fixture
def make_config(data_dir):
  """`make_config("train.num_epochs=2", ...)`: the default experiment on the session data dir,
  overridden."""

  def make(*overrides: str, path: str = DEFAULT):
    return load(f"data.data_dir={data_dir}", *overrides, path=path)

  return make
