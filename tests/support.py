"""Test helpers (the fixtures are in conftest.py): paths, the CLI as a subprocess, configs."""

import os
import subprocess
import sys

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

  With `fault` (`ACTION@POINT:STEP`, see `research.testing.faults`), the process is run under
  `python -m research.testing.faults`, which kills it at that point.
  """
  command = [sys.executable, RUN, *args]
  if fault is not None:
    command = [sys.executable, "-m", "research.testing.faults", fault, RUN, *args]
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
