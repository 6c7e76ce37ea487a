"""Ablations: every variant and seed trained, accuracy summarised truly, cost beside it, bad
variants refused first."""

import csv
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

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
      "'model.widths=(8,16)', 'model.hidden=32', 'train.log_grad_norms=True')",
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


def _step_flops(layers, params: int, batch: int = 32) -> int:
  """Analytic train-step FLOPs by hand: per layer (MACs per example, bias adds per example,
  whether it reads the data directly), forward 2 MACs + bias adds, backward 2 MACs for the weight
  gradient, 2 for the input gradient (none for a layer on the data) and the bias adds again (the
  bias gradient), plus Adam's 14 FLOPs per parameter."""
  total = 0
  for macs, bias, on_data in layers:
    total += ((4 if on_data else 6) * macs + 2 * bias) * batch
  return total + 14 * params


def test_ablation_trains_every_variant_and_seed_and_reports_them(ablation):
  _, out, (results, written) = ablation
  table = results["tables"][0]
  rows = table["rows"]
  assert [r["label"] for r in rows] == ["conv", "factorized"]
  assert table["reference"] == "conv" and results["seeds"] == [0, 1]
  for row in rows:
    runs = [metrics.read(str(out / "runs" / "blocks" / row["label"] / f"seed_{s}"))[-1]
            for s in (0, 1)]  # fmt: skip
    accuracies = [r["test_accuracy"] for r in runs]
    acc = row["test_accuracy"]
    assert acc["values"] == accuracies and acc["n"] == 2
    # The 95% interval, by SciPy: mean +- t(0.975, 1) * s / sqrt(2).
    low, high = scipy_stats.t.interval(
      0.95, 1, loc=np.mean(accuracies), scale=scipy_stats.sem(accuracies)
    )
    assert (acc["low"], acc["high"]) == pytest.approx((low, high), rel=1e-9)
    timed = row["step_seconds"]
    assert (timed["n"], timed["warmup"]) == (5, 1)  # ablation.repeats, ablation.warmup.
    assert row["xla_flops"] > 0
  conv, factorized = rows
  # The paired difference, seed by seed, by SciPy.
  d = np.subtract(factorized["test_accuracy"]["values"], conv["test_accuracy"]["values"])
  low, high = scipy_stats.t.interval(0.95, 1, loc=d.mean(), scale=scipy_stats.sem(d))
  diff = factorized["difference"]
  assert conv["difference"] is None
  assert (diff["mean"], diff["low"], diff["high"]) == pytest.approx((d.mean(), low, high))
  assert diff["resolved"] == (low > 0 or high < 0)
  # Costs by hand. cnn widths (8, 16), hidden 32, on 8x8x1 (SAME; 2x2 pools): conv 3x3 layers
  # against the 3x1+1x3 pairs (mid = min(cin, cout)); the same dense head (2x2x16 -> 32 -> 10).
  head = (2 * 2 * 16 * 32 + 32) + (32 * 10 + 10)
  params = {
    "conv": (9 * 8 + 8) + (9 * 8 * 16 + 16) + head,
    "factorized": (3 + 1 + 3 * 8 + 8) + (3 * 8 * 8 + 8 + 3 * 8 * 16 + 16) + head,
  }
  dense = [(64 * 32, 32, False), (32 * 10, 10, False)]
  flops = {
    "conv": _step_flops(
      [(64 * 9 * 8, 64 * 8, True), (16 * 9 * 8 * 16, 16 * 16, False), *dense], params["conv"]
    ),
    "factorized": _step_flops(
      [
        (64 * 3 * 1, 64 * 1, True),
        (64 * 3 * 8, 64 * 8, False),
        (16 * 3 * 8 * 8, 16 * 8, False),
        (16 * 3 * 8 * 16, 16 * 16, False),
        *dense,
      ],
      params["factorized"],
    ),  # fmt: skip
  }
  for row in rows:
    assert row["params"] == params[row["label"]]
    assert row["train_step_flops"] == flops[row["label"]]
  assert factorized["ratio"]["params"] == pytest.approx(params["factorized"] / params["conv"])
  assert factorized["ratio"]["train_step_flops"] == pytest.approx(
    flops["factorized"] / flops["conv"]
  )
  assert factorized["ratio"]["xla_flops"] == pytest.approx(
    factorized["xla_flops"] / conv["xla_flops"]
  )
  assert factorized["ratio"]["step_seconds"] == pytest.approx(
    factorized["step_seconds"]["median"] / conv["step_seconds"]["median"]
  )
  # The files: JSON as returned, one CSV row per variant, the Markdown table, the plots.
  assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
  with open(out / "results.csv") as f:
    csv_rows = list(csv.DictReader(f))
  assert [(r["table"], r["variant"]) for r in csv_rows] == [("blocks", "conv"),
                                                             ("blocks", "factorized")]  # fmt: skip
  assert float(csv_rows[1]["difference_mean"]) == pytest.approx(d.mean())
  md = (out / "results.md").read_text()
  assert "| factorized |" in md and "resolved" in md
  for name in ("blocks.png", "blocks_differences.png", "blocks_grad_norms.png"):
    assert name in written and Image.open(out / name).size[0] > 500
  # The gradient norm of each layer, input to output, the mean over the seeds' logged ones.
  logged = [metrics.read(str(out / "runs" / "blocks" / "conv" / f"seed_{s}"))[-1] for s in (0, 1)]
  norms = conv["grad_norms"]
  assert list(norms) == ["ConvBlock_0/Conv_0", "ConvBlock_1/Conv_0", "DenseHead_0/Dense_0",
                         "DenseHead_0/Dense_1"]  # fmt: skip
  for layer, per_epoch in norms.items():
    assert per_epoch == [pytest.approx(np.mean([r[f"grad_norm/{layer}"] for r in logged]))]


def test_a_rerun_trains_nothing_and_report_reproduces_the_files(ablation, monkeypatch):
  config, out, (results, written) = ablation

  def retrain(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_seeds", retrain)
  monkeypatch.setattr(train, "train_and_evaluate", retrain)
  again, _ = ablate.run(config, str(out))
  assert again["trained_runs"] == 0
  for a, b in zip(again["tables"][0]["rows"], results["tables"][0]["rows"]):
    assert (a["test_accuracy"], a["difference"]) == (b["test_accuracy"], b["difference"])
  # `run.py report` renders every file again, from the saved runs, the same bytes: with the
  # renderings gone, and the accuracies dropped from results.json (it keeps the costs and times).
  before = {name: (out / name).read_bytes() for name in written}
  for name in written:
    if name != "results.json":
      (out / name).unlink()
  kept = json.loads((out / "results.json").read_text())
  for row in kept["tables"][0]["rows"]:
    del row["test_accuracy"], row["difference"], row["grad_norms"]
  (out / "results.json").write_text(json.dumps(kept))
  result = run_cli("report", f"--workdir={out}")
  assert result.returncode == 0, result.stderr
  assert {name: (out / name).read_bytes() for name in written} == before


def test_a_rerun_elsewhere_trains_nothing_where_only_the_distributed_keys_differ(
  ablation, monkeypatch
):
  """Where a run ran (`distributed`: its processes) is not what it is: a rerun whose configs differ
  from the saved `config.json` there only (or a `config.json` written before the section existed)
  reads the runs back; any other difference trains again."""
  config, out, _ = ablation

  def retrain(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_seeds", retrain)
  saved = out / "runs" / "blocks" / "conv" / "seed_0" / "config.json"
  before = saved.read_text()
  elsewhere = ml_collections.ConfigDict(config.to_dict())
  elsewhere.ablation.overrides = (*config.ablation.overrides, "distributed.coordinator=host:1")
  try:
    older = json.loads(before)
    del older["distributed"]
    saved.write_text(json.dumps(older))
    assert ablate.run(elsewhere, str(out))[0]["trained_runs"] == 0
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.ablation.overrides = (*config.ablation.overrides, "optimizer.learning_rate=0.5")
    with pytest.raises(AssertionError, match="trained again"):
      ablate.run(changed, str(out))
  finally:
    saved.write_text(before)


def test_report_without_an_ablation_is_one_line(tmp_path):
  result = run_cli("report", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"error: {tmp_path}/results.json does not exist")
  assert not os.listdir(tmp_path)


def test_one_progress_count_over_all_runs_with_plain_lines_without_a_terminal(
  data_dir, tmp_path, monkeypatch, caplog
):
  """Two variants x one seed x one epoch of 44 steps: 88 steps in all, counted across the runs,
  a plain line each time (PROGRESS_SECONDS 0) since the test's output is no terminal."""
  config = tiny(data_dir)
  config.ablation.seeds = (0,)
  monkeypatch.setattr(train, "PROGRESS_SECONDS", 0.0)
  ablate.run(config, str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ablation: step")]
  assert lines[0].startswith("ablation: step 1/88 (1%)")
  assert lines[-1].startswith("ablation: step 88/88 (100%)") and "min left" in lines[-1]
  assert len(lines) == 88  # Each step counted once, across both runs.


@pytest.mark.parametrize(
  "name",
  ["ablations", "factorization", "factorization_depth", "bottleneck", "activations"],
)
def test_every_shipped_ablation_builds_all_its_runs(name):
  """Every variant of every table builds (config and model, from static metadata: no data)."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", f"{name}.py"))
  assert ablate.check(config) > 0


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
