"""The README's ablation tables are the committed results, rendered (`experiments/results/`)."""

import glob
import json
import os

import pytest

from research.ablate import report

from support import ROOT

RESULTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "results", "*.json")))


def test_there_are_committed_results():
  assert RESULTS


@pytest.mark.parametrize("path", RESULTS, ids=os.path.basename)
def test_every_committed_table_is_in_the_readme_as_rendered(path):
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  with open(path) as f:
    results = json.load(f)
  for table in results["tables"]:
    assert report.markdown(table, len(results["seeds"])) in readme, (
      f"README.md lacks table {table['name']!r} of {os.path.relpath(path, ROOT)} as rendered; "
      "copy it from the run's results.md"
    )
