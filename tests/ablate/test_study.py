"""Ablations: every variant and seed trained once, accuracy summarised truly, cost beside it, bad
variants refused first."""

import csv
import dataclasses
import json
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from research import config as config_lib
from research.ablate import runs, stats
from research.ablate import study as ablate
from research.errors import UserError
from research.training import metrics

from support import ROOT, run_cli

ABLATIONS = os.path.join(ROOT, "experiments", "ablations.py")


def tiny(data_dir, variants=("model.block=conv", "model.block=factorized"), seeds="(0,1)"):
  """The smoke ablation's `blocks` table, small: a CNN of widths (8, 16) for one epoch."""
  config = config_lib.load_config(ABLATIONS)
  config_lib.apply_overrides(
    config,
    [
      f"ablation.overrides=('data.data_dir={data_dir}', 'train.num_epochs=1', "
      "'model.widths=(8,16)', 'model.hidden=32', 'train.log_grad_norms=True')",
      f"ablation.seeds={seeds}",
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


def _runs_on_disk(out) -> dict[str, tuple[int, bytes]]:
  """`{run folder: (mtime of metrics.jsonl, its bytes)}` of every run trained under `out`, a
  folder of its own (links to another run's folder left out)."""
  found = {}
  for parent, _, files in os.walk(os.path.join(out, "runs")):  # Not into links.
    if "metrics.jsonl" in files:
      path = os.path.join(parent, "metrics.jsonl")
      with open(path, "rb") as f:
        found[os.path.relpath(parent, out)] = (os.stat(path).st_mtime_ns, f.read())
  return found


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
  [table] = results.tables
  rows = table.rows
  assert [r.label for r in rows] == ["conv", "factorized"]
  assert table.reference == "conv" and results.seeds == [0, 1] and results.trained_runs == 4
  assert sorted(_runs_on_disk(out)) == [
    os.path.join("runs", "blocks", label, f"seed_{s}") for label in ("conv", "factorized")
    for s in (0, 1)
  ]  # fmt: skip
  for row in rows:
    runs_ = [metrics.read(str(out / "runs" / "blocks" / row.label / f"seed_{s}"))[-1]
             for s in (0, 1)]  # fmt: skip
    accuracies = [r["test_accuracy"] for r in runs_]
    # Each seed's final accuracy, summarised by `stats.interval` (checked in test_stats).
    assert row.test_accuracy == stats.interval(accuracies)
    assert row.test_accuracy.mean == pytest.approx(np.mean(accuracies))
    assert (row.step_seconds.n, row.step_seconds.warmup) == (5, 1)  # repeats, warmup.
    assert row.xla_flops > 0
  conv, factorized = rows
  # The paired difference, seed by seed.
  d = np.subtract(factorized.test_accuracy.values, conv.test_accuracy.values)
  assert conv.difference is None
  assert factorized.difference.values == pytest.approx(list(d))
  assert factorized.difference == stats.paired(
    factorized.test_accuracy.values, conv.test_accuracy.values
  )
  assert table.resolution == stats.resolvable(factorized.difference.std, 2)
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
    assert row.params == params[row.label]
    assert row.train_step_flops == flops[row.label]
  assert factorized.ratio.params == pytest.approx(params["factorized"] / params["conv"])
  assert factorized.ratio.train_step_flops == pytest.approx(flops["factorized"] / flops["conv"])
  assert factorized.ratio.xla_flops == pytest.approx(factorized.xla_flops / conv.xla_flops)
  assert factorized.ratio.step_seconds == pytest.approx(
    factorized.step_seconds.median / conv.step_seconds.median
  )
  # The files: JSON as returned, one CSV row per variant, the Markdown table, the plots.
  assert json.loads((out / "results.json").read_text()) == json.loads(
    json.dumps(dataclasses.asdict(results))
  )
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
  norms = conv.grad_norms
  assert list(norms) == ["ConvBlock_0/Conv_0", "ConvBlock_1/Conv_0", "DenseHead_0/Dense_0",
                         "DenseHead_0/Dense_1"]  # fmt: skip
  for layer, per_epoch in norms.items():
    assert per_epoch == [pytest.approx(np.mean([r[f"grad_norm/{layer}"] for r in logged]))]


def test_a_rerun_trains_nothing_and_report_reproduces_the_files(ablation):
  """A rerun reads every run back: it says it trained none, and no run's metrics file is written
  again. `run.py report` then renders every file again from the saved runs, the same bytes."""
  config, out, (results, written) = ablation
  before_runs = _runs_on_disk(out)
  again, _ = ablate.run(config, str(out))
  assert again.trained_runs == 0 and _runs_on_disk(out) == before_runs
  for a, b in zip(again.tables[0].rows, results.tables[0].rows):
    assert (a.test_accuracy, a.difference) == (b.test_accuracy, b.difference)
  # With the renderings gone, and the accuracies dropped from results.json (it keeps the costs
  # and times).
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


def test_a_rerun_elsewhere_trains_nothing_where_only_the_distributed_keys_differ(ablation):
  """Where a run ran (`distributed`: its processes) is not what it is: a rerun whose configs differ
  from the saved `config.json` there only (or a `config.json` written before the section existed)
  reads the runs back; any other difference trains again."""
  config, out, _ = ablation
  saved = out / "runs" / "blocks" / "conv" / "seed_0" / "config.json"
  before = saved.read_text()
  elsewhere = ml_collections.ConfigDict(config.to_dict())
  elsewhere.ablation.overrides = (*config.ablation.overrides, "distributed.coordinator=host:1")
  try:
    older = json.loads(before)
    del older["distributed"]
    saved.write_text(json.dumps(older))
    assert [r.action for r in runs.plan(elsewhere, str(out))] == ["read"] * 4
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.ablation.overrides = (*config.ablation.overrides, "optimizer.learning_rate=0.5")
    assert [r.action for r in runs.plan(changed, str(out))] == ["train"] * 4
  finally:
    saved.write_text(before)


@pytest.fixture(scope="module")
def listed_twice(data_dir, tmp_path_factory):
  """(config, out folder, results, the ablation's progress lines) of a tiny ablation that lists one
  configuration twice: `blocks/conv` and `activations/relu` resolve to one config (the base's
  block and activation). One seed, one epoch; lines at every count (`progress_interval=0`)."""
  config = tiny(data_dir, seeds="(0,)")
  config_lib.apply_overrides(config, ["ablation.tables=('blocks','activations')"])
  with config.ablation.activations.unlocked():
    config.ablation.activations.variants = (
      {"label": "relu", "overrides": ("model.activation=relu",)},
    )
  out = tmp_path_factory.mktemp("listed_twice")
  lines = []
  handler = logging.Handler()
  handler.emit = lambda record: lines.append(record.getMessage())
  logger = logging.getLogger("research.ablate")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    results, _ = ablate.run(config, str(out), progress_interval=0.0)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return config, out, results, [line for line in lines if line.startswith("ablation: step")]


def test_a_configuration_listed_twice_trains_once(listed_twice):
  """It trains once, and the second row is the first one's run read back: the same numbers, from
  the same files (`run.py report` reads them the same way)."""
  _, out, results, _ = listed_twice
  conv, relu = results.tables[0].rows[0], results.tables[1].rows[0]
  assert results.trained_runs == 2 and sorted(_runs_on_disk(out)) == [
    os.path.join("runs", "blocks", label, "seed_0") for label in ("conv", "factorized")
  ]
  for field in ("params", "train_step_flops", "test_accuracy", "grad_norms"):
    assert getattr(relu, field) == getattr(conv, field), field
  again, _ = ablate.rerender(str(out))
  assert again.tables[1].rows[0].test_accuracy == relu.test_accuracy


def test_one_progress_count_over_all_runs_with_plain_lines_without_a_terminal(listed_twice):
  """Two runs of one epoch of 44 steps each, and a third linked to the first: 88 steps in all,
  counted across the runs, a plain line at every count since the test's output is no terminal."""
  lines = listed_twice[3]
  done = [int(line.split()[2].split("/")[0]) for line in lines]
  assert lines and all(line.split()[2].endswith("/88") for line in lines)
  assert done == sorted(done) and len(set(done)) == len(done)  # Counted on, never twice.
  assert done[0] <= 44 < done[-1] == 88  # Both runs counted in one total.
  assert "min left" in lines[-1]


def test_a_run_no_longer_listed_twice_trains_in_a_folder_of_its_own(listed_twice):
  """Once `activations/relu` differs from `blocks/conv`, it trains again, not through the link
  into the first run's folder: that one is left as it was."""
  config, out, _, _ = listed_twice
  first = _runs_on_disk(out)[os.path.join("runs", "blocks", "conv", "seed_0")]
  config.ablation.activations.variants = (
    {"label": "relu", "overrides": ("model.activation=relu", "optimizer.learning_rate=0.002")},
  )
  changed, _ = ablate.run(config, str(out))
  assert changed.trained_runs == 1
  assert not (out / "runs" / "activations" / "relu" / "seed_0").is_symlink()
  assert _runs_on_disk(out)[os.path.join("runs", "blocks", "conv", "seed_0")] == first


def test_report_without_an_ablation_is_one_line(tmp_path):
  result = run_cli("report", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"error: {tmp_path}/results.json does not exist")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
  "name",
  ["ablations", "factorization", "factorization_depth", "bottleneck", "activations"],
)
def test_every_shipped_ablation_builds_all_its_runs(name):
  """Every variant of every table builds (config and model, from static metadata: no data)."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", f"{name}.py"))
  steps = ablate.check(config)
  listed = [(t, v["label"]) for t in config.ablation.tables for v in config.ablation[t].variants]
  assert list(steps) == listed and all(n > 0 for n in steps.values())


def test_bad_variant_fails_before_anything_trains(data_dir, tmp_path):
  config = tiny(data_dir, variants=("model.block=conv", "model.block=fourier"))
  with pytest.raises(UserError, match="variant 'fourier'.*config.model.block: .*'fourier'"):
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
