"""Shared fixtures: a TFDS data dir with the embedded digits prepared once per session.

Helpers that are not fixtures live in `support.py`.
"""

import pytest

from support import DEFAULT, load


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the prepared `sklearn_digits` (prepared here, offline)."""
  from research.data import pipeline

  path = str(tmp_path_factory.mktemp("tfds"))
  pipeline.info(load(f"data.data_dir={path}"))  # Prepares the dataset.
  return path


@pytest.fixture
def make_config(data_dir):
  """`make_config("train.num_epochs=2", ...)`: the default experiment on the session data dir,
  overridden."""

  def make(*overrides: str, path: str = DEFAULT):
    return load(f"data.data_dir={data_dir}", *overrides, path=path)

  return make
