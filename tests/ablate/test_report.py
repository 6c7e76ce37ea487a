"""An ablation's results without training: the committed results read back and rendered as
`run.py report` renders them, and the accuracy plot's panels."""

import dataclasses
import glob
import json
import os
import shutil

import pytest

from research.ablate import plots, results, study, tables
from research.errors import UserError

from support import ROOT

COMMITTED = sorted(glob.glob(os.path.join(ROOT, "experiments", "results", "*.json")))


def test_there_are_committed_results():
  assert COMMITTED


@pytest.mark.parametrize("path", COMMITTED, ids=os.path.basename)
def test_report_renders_every_committed_result_as_it_was_written(path, tmp_path):
  """`run.py report` on a copy of a committed `results.json` (no runs beside it) reads it into the
  dataclasses and writes it back the same bytes, with its tables, CSV and plots."""
  shutil.copy(path, tmp_path / results.RESULTS)
  with open(path, "rb") as f:
    committed = f.read()
  read, written = study.rerender(str(tmp_path))
  assert (tmp_path / results.RESULTS).read_bytes() == committed
  assert dataclasses.asdict(read) == json.loads(committed)
  md = (tmp_path / "results.md").read_text()
  for table in read.tables:
    assert tables.markdown(table, len(read.seeds)) in md
    assert f"{table.name}.png" in written and f"{table.name}_differences.png" in written
  assert all((tmp_path / name).stat().st_size > 0 for name in written)


def test_results_of_another_shape_are_one_user_error(tmp_path):
  (tmp_path / results.RESULTS).write_text(json.dumps({"schema": results.SCHEMA, "tables": []}))
  with pytest.raises(UserError, match="is not the results of an ablation"):
    results.load(str(tmp_path))
  (tmp_path / results.RESULTS).write_text(json.dumps({"schema": "convlab.ablation/1"}))
  with pytest.raises(UserError, match="has schema 'convlab.ablation/1'"):
    results.load(str(tmp_path))


def _committed(name: str, table: int = 0) -> results.Table:
  return results.read(os.path.join(ROOT, "experiments", "results", f"{name}.json")).tables[table]


def test_accuracy_is_plotted_against_flops_only_where_the_flops_differ():
  """The activations differ in no FLOP the analytic count sees: accuracy against FLOPs would be
  one vertical line, so only the time panel is drawn and the title gives the shared count. Blocks
  differ in FLOPs: both panels."""
  activations, blocks = _committed("activations"), _committed("factorization")
  assert len({r.train_step_flops for r in activations.rows}) == 1  # What the rule is for.
  assert plots.accuracy_panels(activations) == ["step_seconds"]
  assert plots.accuracy_panels(blocks) == ["train_step_flops", "step_seconds"]
  fig = plots.accuracy_figure(activations)
  [ax] = fig.axes
  assert ax.get_xlabel().startswith("train-step time")
  flops = activations.rows[0].train_step_flops / 1e6
  assert f"every variant: {flops:,.1f} M train-step FLOPs" in fig.get_suptitle()
  assert [a.get_xlabel().split(" (")[0] for a in plots.accuracy_figure(blocks).axes] == [
    "train-step FLOPs",
    "train-step time",
  ]


def test_a_clipped_interval_is_drawn_to_its_bounds():
  """An interval clipped at 100% (`ablate.stats`) is drawn from its low end to 100, not as
  mean +- half."""
  table = _committed("ablations")
  row = table.rows[0]
  clipped = dataclasses.replace(
    row.test_accuracy, low=row.test_accuracy.mean - 0.05, high=1.0, half=0.05
  )
  below, above = plots.error_bar(clipped)
  assert below == [pytest.approx(5.0)] and above == [pytest.approx(100 * (1 - clipped.mean))]
