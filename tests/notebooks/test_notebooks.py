"""Every notebook under research/notebooks/ runs top to bottom without an error."""

import glob
import os

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from support import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "research", "notebooks", "*.ipynb")))


def _execute(notebook, path: str) -> None:
  """Runs `notebook` as if it were at `path`; a failing cell raises `CellExecutionError`."""
  nbclient.NotebookClient(
    notebook,
    timeout=300,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.dirname(path)}},
  ).execute()


def test_there_are_notebooks():
  assert NOTEBOOKS


# Notebooks that read Fashion-MNIST from Debian's dataset-fashion-mnist (.ci/run installs it).
NEEDS_FASHION_MNIST = {"factorization_and_1x1.ipynb"}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
  if os.path.basename(path) in NEEDS_FASHION_MNIST and not os.path.isdir(DEBIAN_FASHION_MNIST):
    pytest.skip(f"needs Debian's dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})")
  _execute(nbformat.read(path, as_version=4), path)


def test_a_notebook_with_a_failing_cell_fails(tmp_path):
  notebook = nbformat.v4.new_notebook(
    cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("assert x == 2, 'broken'")]
  )
  with pytest.raises(CellExecutionError, match="broken"):
    _execute(notebook, str(tmp_path / "broken.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  code = [c for c in notebook.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
