"""The PyTorch twin is optional: its modules import without torch, and say so."""

import subprocess
import sys

from support import ROOT


def test_the_twin_modules_import_and_say_so_without_torch():
  code = (
    "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError.
    "from research.measure import bench, twin_model, twin_step\n"
    "assert not twin_model.available() and twin_step.bench_twin(None) is None\n"
    "assert bench._twin(None) is None\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
