"""Downloading a TFDS dataset: without network it fails within seconds and writes nothing; a
download that fails midway removes only what it wrote."""

import os

import pytest
import tensorflow_datasets as tfds

from research.data import prepare
from research.errors import DataError

from support import load, run_cli

# A proxy on a closed port: every download fails to connect, on any machine, with or without
# network. Before: TFDS retried with exponential backoff for minutes, and left a partial `.tmp`
# download behind.
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
    timeout=60,  # TFDS's own retries take minutes: this times out if the probe is gone.
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
  monkeypatch.setattr(prepare, "_unreachable", lambda builder: None)  # As if the hosts answered.

  def partial_download(self, *args, **kwargs):
    (tmp_path / "downloads" / "cifar10" / "half.tar.gz.tmp.1234").write_bytes(b"half")
    (tmp_path / "cifar10" / "3.0.2.incomplete").mkdir(parents=True)
    raise ConnectionError("connection reset")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", partial_download)
  config = load("data.name=cifar10", "data.download=True", f"data.data_dir={root}")
  with pytest.raises(DataError, match="could not download TFDS dataset 'cifar10' into .*reset"):
    prepare.get_builder(config)
  left = sorted(os.path.relpath(os.path.join(p, n), root)
                for p, ds, fs in os.walk(root) for n in ds + fs)  # fmt: skip
  assert left == ["cifar10.prepare.lock", "downloads", "downloads/cifar10",
                  "downloads/cifar10/earlier.tar.gz"]  # fmt: skip
