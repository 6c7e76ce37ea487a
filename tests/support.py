"""Test helpers (the fixtures are in conftest.py): paths, the CLI as a subprocess, configs."""

import gzip
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.py")
DEFAULT = os.path.join(ROOT, "experiments", "default.py")
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def run_cli(
  *args: str,
  cwd: str = ROOT,
  env: dict | None = None,
  timeout: float = 300,
  fault: str | None = None,
) -> subprocess.CompletedProcess:
  """`python run.py ARGS` in a subprocess; stdout and stderr captured as text.

  With `fault` (`ACTION@POINT:STEP`, see `tests/faults.py`), the process is run under
  `python tests/faults.py`, which kills it at that point.
  """
  command = [sys.executable, RUN, *args]
  if fault is not None:
    command = [sys.executable, os.path.join(ROOT, "tests", "faults.py"), fault, RUN, *args]
  return subprocess.run(
    command,
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
  )


def load(*overrides: str, path: str = DEFAULT):
  """The experiment at `path` (the default one) with `overrides` (`KEY=VALUE`) applied."""
  from research import config as config_lib

  config = config_lib.load_config(path)
  config_lib.apply_overrides(config, overrides)
  return config


def write_idx(path, array: np.ndarray, magic: int | None = None, gz: bool = True, cut: int = 0):
  """Writes `array` (uint8) as an IDX file by the format's definition: 2 zero bytes, type 0x08,
  the number of dimensions, each size as a big-endian uint32, then the bytes; `cut` drops that
  many bytes from the end."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
    int(n).to_bytes(4, "big") for n in array.shape
  )
  if magic is not None:
    header = magic.to_bytes(4, "big") + header[4:]
  data = (header + array.astype(np.uint8).tobytes())[: len(header) + array.size - cut]
  opener = gzip.open if gz else open
  with opener(str(path), "wb") as f:
    f.write(data)
  return str(path)


def write_split(directory, split, images, labels, gz=True):
  """The two IDX files of `split` in `directory`, named as the datasets name them."""
  from research.data.idx import FILES

  suffix = ".gz" if gz else ""
  image_name, label_name = FILES[split]
  write_idx(os.path.join(directory, image_name + suffix), images, gz=gz)
  write_idx(os.path.join(directory, label_name + suffix), labels, gz=gz)
