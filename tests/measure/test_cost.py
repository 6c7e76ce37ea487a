"""`run.py cost`: the report of block variants and of a model: ratios, structure, text, CLI."""

import dataclasses
import json
import os
import re

import ml_collections
import pytest
from report_loader import Mismatch, load

from research import config as config_lib
from research.errors import ConfigError
from research.measure import cost, reports, text

from support import ROOT, run_cli

# XLA's count and the in-bounds analytic count agree within 2% (the README's promise; see
# measure.flops).
XLA_TOLERANCE = 0.02
# The report's variants, on [2, 8, 8, 64] -> 64: all but separable use ungrouped convolutions.
VARIANTS = (
  {"label": "3x3", "blocks": ({"name": "conv"},)},
  {"label": "3x1+1x3", "blocks": ({"name": "factorized"},)},
  {"label": "1x1", "blocks": ({"name": "pointwise"},)},
  {"label": "bottleneck", "blocks": ({"name": "bottleneck"},)},
  {
    "label": "bneck 3x1+1x3",
    "reference": "bottleneck",
    "blocks": ({"name": "bottleneck", "inner": "factorized"},),
  },
  {"label": "3x3 BN", "blocks": ({"name": "conv", "norm": True},)},
  {"label": "separable", "blocks": ({"name": "separable"},)},
)
DENSE_VARIANTS = [v["label"] for v in VARIANTS if v["label"] != "separable"]


def _small_config(*overrides: str) -> ml_collections.ConfigDict:
  """cost_blocks.py on [2, 8, 8, 64] -> 64, with `VARIANTS`."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", "cost_blocks.py"))
  config_lib.apply_overrides(
    config,
    [
      "cost.blocks.batch_size=2",
      "cost.blocks.resolutions=(8,)",
      "cost.blocks.widths=(64,)",
      "cost.repeats=5",
      *overrides,
    ],
  )
  with config.unlocked():
    config.cost.blocks.variants = VARIANTS
  return config


@pytest.fixture(scope="module")
def report() -> dict:
  """The cost report of `VARIANTS` (forward and forward+backward, 5 timed calls), through JSON
  and back."""
  return json.loads(json.dumps(cost.run(_small_config())))


def _rows(report) -> dict:
  return {row["label"]: row for row in report["tables"][0]["settings"][0]["rows"]}


@pytest.mark.parametrize("label", DENSE_VARIANTS)
def test_analytic_flops_agree_with_xla_within_the_stated_tolerance(report, label):
  for name, p in _rows(report)[label]["passes"].items():
    assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=XLA_TOLERANCE), name
    # The naive count also holds the SAME-padding taps XLA skips: at most (10/8)^2 of them for a 3x3
    # on 8x8.
    assert (
      p["xla_flops"] * (1 - XLA_TOLERANCE)
      <= p["flops"]
      <= p["xla_flops"] * (100 / 64) * (1 + XLA_TOLERANCE)
    )


def test_separable_forward_agrees_with_xla(report):
  # Its backward does not: XLA counts the depthwise weight gradient as a dense convolution
  # (measure.flops).
  p = _rows(report)["separable"]["passes"]["forward"]
  assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=XLA_TOLERANCE)


def test_report_loads_back_into_its_dataclasses(report):
  loaded = load(reports.CostReport, report)
  assert loaded.schema == "convlab.cost/1" and loaded.environment.cpu_cores >= 1
  [setting] = loaded.tables[0].settings
  assert [row.label for row in setting.rows] == [v["label"] for v in VARIANTS]
  assert set(setting.rows[0].passes) == {"forward", "forward_backward"}  # cost.passes.
  assert json.loads(json.dumps(dataclasses.asdict(loaded))) == report  # Nothing lost.


def test_report_times_each_pass_and_gives_ratios_to_the_reference(report):
  rows = _rows(report)
  full, pair = rows["3x3"], rows["3x1+1x3"]
  assert (pair["reference"], rows["bneck 3x1+1x3"]["reference"]) == ("3x3", "bottleneck")
  for name in ("forward", "forward_backward"):
    for row in (full, pair):
      seconds = row["passes"][name]["seconds"]
      assert (seconds["n"], seconds["warmup"]) == (5, 1)  # cost.repeats, cost.warmup.
      assert seconds["min"] > 0
    assert pair["passes"][name]["ratio"]["seconds"] == pytest.approx(
      pair["passes"][name]["seconds"]["median"] / full["passes"][name]["seconds"]["median"]
    )
    assert pair["passes"][name]["ratio"]["xla_flops"] == pytest.approx(
      pair["passes"][name]["xla_flops"] / full["passes"][name]["xla_flops"]
    )
  assert pair["ratio"]["macs"] == pytest.approx(6 / 9)
  assert [l["window"] for l in pair["layers"]] == [[3, 1], [1, 3]]


def test_text_table_puts_the_time_ratio_beside_the_flop_ratio(report):
  table = text.format_report(report)
  header = next(line for line in table.splitlines() if line.startswith("variant"))
  assert re.search(r"FLOPs x\s+time x", header)
  assert "3x1+1x3" in table and "Conv_1 1x3 64->64" in table


@pytest.mark.parametrize(
  "path, value",
  [(("repeats",), "five"), (("tables", 0, "settings", 0, "rows", 0, "params"), None)],
)
def test_loading_refuses_a_mistyped_or_missing_field(report, path, value):
  broken = json.loads(json.dumps(report))
  parent = broken
  for part in path[:-1]:
    parent = parent[part]
  if value is None:
    del parent[path[-1]]
  else:
    parent[path[-1]] = value
  with pytest.raises(Mismatch, match=path[-1]):
    load(reports.CostReport, broken)


@pytest.mark.parametrize(
  "variant, key",
  [
    ({"label": "a", "blocks": ({"name": "nope"},)}, "cost.blocks.variants[0].blocks[0].name"),
    (
      {"label": "a", "blocks": ({"name": "conv", "kernel": 3},)},
      "cost.blocks.variants[0].blocks[0].kernel",
    ),
    (
      {"label": "a", "blocks": ({"name": "conv", "activation": "nope"},)},
      "cost.blocks.variants[0].blocks[0].activation",
    ),
    ({"label": "a", "blocks": ()}, "cost.blocks.variants[0].blocks"),
    ({"label": "a", "reference": "b", "blocks": ({"name": "conv"},)}, "cost.blocks.reference"),
  ],
)
def test_a_bad_variant_is_a_config_error_naming_its_key(variant, key):
  config = _small_config("cost.passes=('forward',)")
  with config.unlocked():
    config.cost.blocks.variants = (variant,)
    config.cost.blocks.reference = "a"
  with pytest.raises(ConfigError) as e:
    cost.run(config)
  assert e.value.key == key


def test_a_models_cost_agrees_with_xla_and_loads_back(make_config):
  report = json.loads(json.dumps(cost.run(make_config())))  # The default experiment's CNN.
  load(reports.CostReport, report)
  [row] = report["tables"][0]["settings"][0]["rows"]
  assert (
    row["label"] == "cnn" and not row["layers"][0]["input_grad"] and row["layers"][1]["input_grad"]
  )
  for p in row["passes"].values():
    assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=XLA_TOLERANCE)


def test_cli_cost_prints_json_that_loads_back():
  result = run_cli(
    "cost",
    "--config=experiments/cost_blocks.py",
    "--json",
    "--config.cost.blocks.batch_size=1",
    "--config.cost.blocks.resolutions=(8,)",
    "--config.cost.blocks.widths=(8,)",
    "--config.cost.passes=('forward',)",
    "--config.cost.blocks.variants=({'label':'3x3','blocks':({'name':'conv'},)},)",
  )
  assert result.returncode == 0, result.stderr
  assert load(reports.CostReport, json.loads(result.stdout)).tables[0].settings[0].width == 8


def test_cli_cost_reports_a_bad_config_in_one_line():
  result = run_cli("cost", "--config.cost.tables=('nope',)")
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
    "error: config.cost.tables: names 'nope', but there is no section cost.nope"
  ]


def test_a_models_cost_needs_the_shape_of_a_named_dataset_not_its_data(tmp_path):
  config = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  config_lib.apply_overrides(
    config,
    ["data.name=cifar10", f"data.data_dir={tmp_path}", "model.widths=(4,)", "model.hidden=8"],
  )
  [row] = cost.run(config)["tables"][0]["settings"][0]["rows"]
  # 32x32x3: conv 3x3 3->4, pool -> 16x16x4, dense 1024 -> 8, dense 8 -> 10.
  assert row["params"] == (27 * 4 + 4) + (16 * 16 * 4 * 8 + 8) + (8 * 10 + 10)
  assert os.listdir(tmp_path) == []
