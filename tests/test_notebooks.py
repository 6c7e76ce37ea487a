"""Every notebook under research/notebooks/ runs top to bottom without an error."""

import glob
import os

import nbclient
import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "research", "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
  assert not errors
