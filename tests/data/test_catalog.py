"""`python run.py data`: what it lists about each dataset, and `data prepare NAME`."""

import os

import numpy as np

from support import run_cli, write_split


def test_lists_each_known_dataset_with_where_it_is_prepared_or_its_files_are(data_dir, tmp_path):
  source = tmp_path / "mnist_files"
  source.mkdir()
  for split in ("train", "test"):
    write_split(source, split, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
  result = run_cli(
    "data", f"--config.data.data_dir={data_dir}", f"--config.data.source_dir={source}"
  )
  assert result.returncode == 0, result.stderr
  rows = {line.split()[0]: line for line in result.stdout.splitlines() if line}
  assert rows["sklearn_digits"].split()[1:5] == ["embedded", "1437/360", "8x8x1", "10"]
  assert rows["sklearn_digits"].endswith(f"yes, {data_dir}/sklearn_digits/1.0.0")
  assert rows["mnist"].split()[1:6] == ["IDX", "files", "60000/10000", "28x28x1", "10"]
  assert rows["mnist"].endswith(f"no; IDX files in {source}")
  assert "kmnist" in rows and "fashion_mnist" in rows


def test_prepare_prepares_one_dataset_into_the_data_dir(tmp_path):
  result = run_cli("data", "prepare", "sklearn_digits", f"--config.data.data_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith(
    f"sklearn_digits: prepared in {tmp_path}/sklearn_digits/1.0.0"
  )
  assert os.path.isfile(tmp_path / "sklearn_digits" / "1.0.0" / "dataset_info.json")


def test_prepare_without_its_files_is_one_error_line(tmp_path):
  result = run_cli(
    "data", "prepare", "fashion_mnist", f"--config.data.data_dir={tmp_path / 'tfds'}",
    f"--config.data.source_dir={tmp_path}",
  )  # fmt: skip
  assert result.returncode == 2 and result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("error: dataset 'fashion_mnist' is not prepared") and str(tmp_path) in line
