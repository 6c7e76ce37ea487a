"""Ablations: every variant and seed trained, accuracy summarised truly, cost beside it, bad
variants refused first."""

import json
import os
import statistics

import pytest
from PIL import Image

from research import config as config_lib
from research.ablate import study as ablate
from research.errors import UserError
from research.training import metrics, train

from support import ROOT, run_cli

ABLATIONS = os.path.join(ROOT, "experiments", "ablations.py")


def tiny(data_dir, variants=("model.block=conv", "model.block=factorized")):
  config = config_lib.load_config(ABLATIONS)
  config_lib.apply_overrides(
    config,
    [
      f"ablation.overrides=('data.data_dir={data_dir}', 'train.num_epochs=1', "
      "'model.widths=(8,16)', "
      "'model.hidden=32')",
      "ablation.seeds=(0,1)",
      "ablation.repeats=5",
      "ablation.warmup=1",
      "ablation.tables=('blocks',)",
    ],
  )
  with config.ablation.blocks.unlocked():
    config.ablation.blocks.variants = tuple(
      {"label": o.split("=")[1], "overrides": (o,)} for o in variants
    )
    config.ablation.blocks.reference = "conv"
  return config


@pytest.fixture(scope="module")
def ablation(data_dir, tmp_path_factory):
  """(config, out folder, report) of one tiny ablation: 2 variants x 2 seeds x 1 epoch."""
  config, out = tiny(data_dir), tmp_path_factory.mktemp("ablation")
  return config, out, ablate.run(config, str(out))


def test_ablation_trains_every_variant_and_seed_and_reports_them(ablation):
  _, tmp_path, report = ablation
  rows = report["tables"][0]["rows"]
  assert [r["label"] for r in rows] == ["conv", "factorized"]
  for row in rows:
    runs = [
      metrics.read(str(tmp_path / "runs" / "blocks" / row["label"] / f"seed_{s}"))[-1]
      for s in (0, 1)
    ]
    accuracies = [r["test_accuracy"] for r in runs]
    summary = row["test_accuracy"]
    assert summary["values"] == accuracies
    assert summary["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert summary["std"] == pytest.approx(statistics.stdev(accuracies))
    assert (summary["min"], summary["max"]) == (min(accuracies), max(accuracies))
    timed = row["step_seconds"]
    assert (timed["n"], timed["warmup"]) == (5, 1)  # ablation.repeats, ablation.warmup.
  conv, factorized = rows
  for key in ("params", "train_step_flops"):
    assert factorized["ratio"][key] == pytest.approx(factorized[key] / conv[key])
  assert factorized["ratio"]["step_seconds"] == pytest.approx(
    factorized["step_seconds"]["median"] / conv["step_seconds"]["median"]
  )
  # cnn widths (8, 16) on 8x8x1, mid = min(cin, cout): conv 3x3 layers vs the 3x1+1x3 pairs; same
  # dense head.
  head = (2 * 2 * 16 * 32 + 32) + (32 * 10 + 10)
  assert rows[0]["params"] == (9 * 8 + 8) + (9 * 8 * 16 + 16) + head
  assert rows[1]["params"] == (3 + 1 + 3 * 8 + 8) + (3 * 8 * 8 + 8 + 3 * 8 * 16 + 16) + head
  assert rows[1]["ratio"]["train_step_flops"] < 1.0
  assert (
    json.load(open(tmp_path / "ablations.json"))["tables"][0]["rows"][1]["label"] == "factorized"
  )
  table = (tmp_path / "blocks.md").read_text()
  assert "| factorized |" in table and "± " in table
  assert Image.open(tmp_path / "blocks.png").size[0] > 500


def test_rerun_reads_back_finished_runs_with_identical_accuracy(ablation, monkeypatch):
  config, out, report = ablation

  def retrain(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", retrain)
  again = ablate.run(config, str(out))
  assert [r["test_accuracy"] for r in again["tables"][0]["rows"]] == [
    r["test_accuracy"] for r in report["tables"][0]["rows"]
  ]


def test_bad_variant_fails_before_anything_trains(data_dir, tmp_path):
  config = tiny(data_dir, variants=("model.block=conv", "model.block=fourier"))
  with pytest.raises(
    UserError, match="variant 'fourier'.*config.model.block: unknown block 'fourier'"
  ):
    ablate.run(config, str(tmp_path))
  assert not (tmp_path / "runs").exists()


def test_unknown_reference_names_the_key(data_dir, tmp_path):
  config = tiny(data_dir)
  with config.ablation.blocks.unlocked():
    config.ablation.blocks.reference = "3x3"
  with pytest.raises(UserError, match="config.ablation.blocks.reference"):
    ablate.run(config, str(tmp_path))


def test_cli_reports_a_bad_override_in_one_line(tmp_path):
  result = run_cli("ablate", f"--out={tmp_path}", "--config.ablation.seeds=(-1,)")
  assert result.returncode == 2 and result.stderr.strip().startswith(
    "error: config.ablation.seeds:"
  )
