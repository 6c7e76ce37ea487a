"""Costs: analytic counts against hand-computed values and XLA's count; the report, its schema and the CLI."""

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from conftest import ROOT, run_cli
from research import blocks, config as config_lib, cost, flops
from research.errors import ConfigError, UserError

# Hand counts for a [2, 10, 10, 24] input and 32 output channels: 200 output pixels (SAME, stride 1).
SHAPE, WIDTH, PIXELS = (2, 10, 10, 24), 32, 200
HAND = {  # block: (parameters, forward MACs, forward bias adds)
    "conv": (9 * 24 * 32 + 32, PIXELS * 9 * 24 * 32, PIXELS * 32),
    # mid = min(24, 32): 3x1 24 -> 24, then 1x3 24 -> 32.
    "factorized": (3 * 24 * 24 + 24 + 3 * 24 * 32 + 32, PIXELS * (3 * 24 * 24 + 3 * 24 * 32), PIXELS * (24 + 32)),
    "pointwise": (24 * 32 + 32, PIXELS * 24 * 32, PIXELS * 32),
    # mid = 32 // 4: 1x1 24 -> 8, 3x3 8 -> 8, 1x1 8 -> 32.
    "bottleneck": (24 * 8 + 8 + 9 * 8 * 8 + 8 + 8 * 32 + 32, PIXELS * (24 * 8 + 9 * 8 * 8 + 8 * 32),
                   PIXELS * (8 + 8 + 32)),
    # depthwise 3x3 (24 groups) 24 -> 24, then 1x1 24 -> 32.
    "separable": (9 * 24 + 24 + 24 * 32 + 32, PIXELS * (9 * 24 + 24 * 32), PIXELS * (24 + 32)),
}
# The report's variants, on [2, 8, 8, 64] -> 64: all but separable use ungrouped convolutions.
VARIANTS = (
    {"label": "3x3", "blocks": ({"name": "conv"},)},
    {"label": "3x1+1x3", "blocks": ({"name": "factorized"},)},
    {"label": "1x1", "blocks": ({"name": "pointwise"},)},
    {"label": "bottleneck", "blocks": ({"name": "bottleneck"},)},
    {"label": "bneck 3x1+1x3", "reference": "bottleneck", "blocks": ({"name": "bottleneck", "inner": "factorized"},)},
    {"label": "3x3 BN", "blocks": ({"name": "conv", "norm": True},)},
    {"label": "separable", "blocks": ({"name": "separable"},)},
)
DENSE_VARIANTS = [v["label"] for v in VARIANTS if v["label"] != "separable"]


def _counted(name, shape=SHAPE, width=WIDTH, **kwargs):
  module = blocks.make_block(name, width, **kwargs)
  return module, flops.layers(module, jax.ShapeDtypeStruct(shape, jnp.float32))


def _small_config(*overrides: str) -> ml_collections.ConfigDict:
  """cost_blocks.py on [2, 8, 8, 64] -> 64, with `VARIANTS`."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", "cost_blocks.py"))
  config_lib.apply_overrides(config, ["cost.blocks.batch_size=2", "cost.blocks.resolutions=(8,)",
                                      "cost.blocks.widths=(64,)", "cost.repeats=5", *overrides])
  with config.unlocked():
    config.cost.blocks.variants = VARIANTS
  return config


@pytest.fixture(scope="module")
def report() -> dict:
  """The cost report of `VARIANTS` (forward and forward+backward, 5 timed calls), through JSON and back."""
  return json.loads(json.dumps(cost.run(_small_config())))


@pytest.mark.parametrize("name", sorted(HAND))
def test_parameters_match_hand_counts(name):
  module, found = _counted(name)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(SHAPE))
  assert sum(l.params for l in found) == flops.param_count(variables) == HAND[name][0]


@pytest.mark.parametrize("name", sorted(HAND))
def test_forward_macs_and_flops_match_hand_counts(name):
  _, found = _counted(name)
  params, macs, bias_adds = HAND[name]
  totals = flops.totals(found, params)
  assert totals.macs == macs
  assert totals.forward_flops == 2 * macs + bias_adds


@pytest.mark.parametrize("name", sorted(HAND))
def test_forward_backward_is_three_forwards_and_the_train_step_adds_the_optimizer(name):
  _, found = _counted(name)
  params, macs, bias_adds = HAND[name]
  totals = flops.totals(found, params, flops.optimizer_flops("adam", params))
  assert totals.forward_backward_flops == 6 * macs + 2 * bias_adds  # Weight and input gradients, bias sums.
  assert totals.train_step_flops == totals.forward_backward_flops + flops.OPTIMIZER_FLOPS["adam"] * params


def test_a_model_skips_the_input_gradient_of_the_layer_reading_the_data():
  model = blocks.make_block("conv", 4)  # One layer: its input is the data.
  [layer] = flops.layers(model, jnp.zeros((1, 5, 5, 3)), input_grad=False)
  assert not layer.input_grad and layer.forward_backward_flops == 4 * layer.macs + 2 * layer.bias_adds


def test_in_bounds_macs_exclude_the_taps_on_same_padding():
  _, [layer] = _counted("conv")
  assert layer.macs_in_bounds == 2 * 28 * 28 * 24 * 32  # Per axis 10 outputs x 3 taps, less the 2 outside.


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 3, "padding": "SAME"}, {"kernel_size": 3, "strides": 2, "padding": "SAME"},
    {"kernel_size": (5, 3), "strides": (2, 1), "dilation": 2, "padding": "SAME"}, {"kernel_size": 3, "padding": "VALID"},
    {"kernel_size": 3, "padding": ((2, 0), (1, 1))}, {"kernel_size": 4, "strides": 3, "padding": "SAME"},
    {"kernel_size": 3, "groups": 4}])
def test_in_bounds_macs_are_exactly_xlas_count_for_a_bare_convolution(kwargs):
  module, x = blocks.Conv(16, use_bias=False, **kwargs), jnp.ones((2, 9, 11, 16))
  [layer] = flops.layers(module, x)
  variables = jax.tree.map(lambda s: jnp.ones(s.shape), jax.eval_shape(module.init, jax.random.PRNGKey(0), x))
  xla = cost.xla_cost(jax.jit(module.apply).lower(variables, x).compile())["flops"]
  assert xla == pytest.approx(2 * layer.macs_in_bounds, rel=1e-9)


def _rows(report) -> dict:
  return {row["label"]: row for row in report["tables"][0]["settings"][0]["rows"]}


@pytest.mark.parametrize("label", DENSE_VARIANTS)
def test_analytic_flops_agree_with_xla_within_the_stated_tolerance(report, label):
  for name, p in _rows(report)[label]["passes"].items():
    assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=flops.XLA_RTOL), name
    # The naive count also holds the SAME-padding taps XLA skips: at most (10/8)^2 of them for a 3x3 on 8x8.
    assert p["xla_flops"] * (1 - flops.XLA_RTOL) <= p["flops"] <= p["xla_flops"] * (100 / 64) * (1 + flops.XLA_RTOL)


def test_separable_forward_agrees_with_xla(report):
  # Its backward does not: XLA counts the depthwise weight gradient as a dense convolution (research.flops).
  p = _rows(report)["separable"]["passes"]["forward"]
  assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=flops.XLA_RTOL)


def test_a_blocks_train_step_adds_the_optimizers_flops_to_forward_backward():
  subject = cost.block_subject("3x3", blocks.make_block("conv", 16), (2, 8, 8, 16), optax.adam(1e-3),
                               lambda n: flops.optimizer_flops("adam", n))
  xla = {name: cost.compile_pass(*subject.passes[name])[1]["xla_flops"] for name in ("forward_backward", "train_step")}
  optimizer = subject.totals.train_step_flops - subject.totals.forward_backward_flops
  assert optimizer == flops.OPTIMIZER_FLOPS["adam"] * (9 * 16 * 16 + 16)
  assert xla["train_step"] - xla["forward_backward"] == pytest.approx(optimizer, rel=0.15)


@pytest.mark.parametrize("name", sorted(flops.OPTIMIZER_FLOPS))
def test_optimizer_flops_per_parameter_are_within_15_percent_of_xlas(name):
  params = {"w": jnp.ones((10_000,))}
  tx = getattr(optax, name)(1e-3)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step).lower(params, tx.init(params), params).compile()
  assert cost.xla_cost(compiled)["flops"] / 10_000 == pytest.approx(flops.OPTIMIZER_FLOPS[name], rel=0.15)


def test_3x1_plus_1x3_costs_six_ninths_of_a_3x3_at_equal_widths():
  _, full = _counted("conv", (1, 16, 16, 64), 64)
  _, pair = _counted("factorized", (1, 16, 16, 64), 64)
  assert sum(l.macs for l in pair) * 9 == sum(l.macs for l in full) * 6


def test_factorizing_the_3x3_inside_a_256_64_64_256_bottleneck_saves_18_percent_of_the_block():
  shape = (1, 8, 8, 256)
  _, plain = _counted("bottleneck", shape, 256)
  _, fact = _counted("bottleneck", shape, 256, inner="factorized")
  assert sum(l.macs for l in fact[1:3]) * 9 == plain[1].macs * 6  # The inner layer: 6/9 ...
  block = sum(l.macs for l in fact) / sum(l.macs for l in plain)
  assert block == (2 * 256 * 64 + 6 * 64 * 64) / (2 * 256 * 64 + 9 * 64 * 64)  # ... the block: 0.824.
  assert 0.17 < 1 - block < 0.19


def _experiment_macs(name: str) -> dict:
  """{(table, label): forward MACs} of every variant of a shipped experiment, counted without compiling."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", name))
  out = {}
  for table in config.cost.tables:
    section = config.cost[table]
    for variant in section.variants:
      for res in section.resolutions:
        for width in section.widths:
          c_in = (section.in_channels or (width,))[0]
          x = jax.ShapeDtypeStruct((section.batch_size, res, res, c_in), jnp.float32)
          out[table, variant["label"]] = sum(l.macs for l in flops.layers(cost.variant_module(variant, width, "v"), x))
  return out


def test_textbook_experiment_counts_the_textbook_examples():
  macs = _experiment_macs("cost_textbook.py")
  assert macs["reduction", "1x1"] == 100 * 100 * 256 * 32  # 100x100x256 -> 100x100x32.
  assert macs["reduction", "3x3"] == 9 * macs["reduction", "1x1"]
  assert macs["factorization", "3x3"] == 100 * 100 * 9 * 512 * 64  # 2.95G.
  assert macs["factorization", "3x1+1x3"] == 100 * 100 * 3 * 64 * (512 + 64)  # 1.11G.
  assert macs["factorization", "1x1 to 32, 3x3"] == 100 * 100 * 32 * (512 + 9 * 64)  # 348M.


def test_cost_blocks_experiment_compares_the_four_variants_and_the_bottleneck_inner():
  macs = _experiment_macs("cost_blocks.py")
  full = macs["blocks", "3x3"]
  assert macs["blocks", "3x1+1x3"] * 9 == full * 6
  assert macs["blocks", "1x1 bottleneck"] * 9 * 64 * 64 == full * (2 * 64 * 16 + 9 * 16 * 16)
  assert macs["blocks", "separable"] * 9 * 64 * 64 == full * (9 * 64 + 64 * 64)
  assert macs["blocks", "bneck 3x1+1x3"] * (2 * 64 * 16 + 9 * 16 * 16) == (
      macs["blocks", "1x1 bottleneck"] * (2 * 64 * 16 + 6 * 16 * 16))


def test_report_conforms_to_the_documented_schema(report):
  assert cost.schema_errors(report, cost.COST_SCHEMA) == []


def test_report_conforms_to_the_schema_by_jsonschema_too(report):
  jsonschema = pytest.importorskip("jsonschema")
  jsonschema.validate(report, cost.COST_SCHEMA)


def test_report_times_each_pass_and_gives_ratios_to_the_reference(report):
  rows = _rows(report)
  full, pair = rows["3x3"], rows["3x1+1x3"]
  assert (pair["reference"], rows["bneck 3x1+1x3"]["reference"]) == ("3x3", "bottleneck")
  for name in ("forward", "forward_backward"):
    for row in (full, pair):
      seconds = row["passes"][name]["seconds"]
      assert seconds["min"] <= seconds["median"] <= seconds["max"] and seconds["n"] >= 5
    assert full["passes"][name]["ratio"]["seconds"] == 1.0
    assert pair["passes"][name]["ratio"]["xla_flops"] == pytest.approx(
        pair["passes"][name]["xla_flops"] / full["passes"][name]["xla_flops"])
  assert pair["ratio"]["macs"] == pytest.approx(6 / 9)
  assert [l["window"] for l in pair["layers"]] == [[3, 1], [1, 3]]


def test_text_table_puts_the_time_ratio_beside_the_flop_ratio(report):
  text = cost.format_report(report)
  header = next(line for line in text.splitlines() if line.startswith("variant"))
  assert re.search(r"FLOPs x\s+time x", header)
  assert "3x1+1x3" in text and "Conv_1 1x3 64->64" in text


def test_schema_validator_names_missing_and_mistyped_fields(report):
  broken = json.loads(json.dumps(report))
  del broken["tables"][0]["settings"][0]["rows"][0]["params"]
  broken["repeats"] = "five"
  errors = cost.schema_errors(broken, cost.COST_SCHEMA)
  assert "$.repeats: expected integer, got str" in errors
  assert "$.tables[0].settings[0].rows[0]: missing 'params'" in errors


@pytest.mark.parametrize("analysis, expected", [
    ({"flops": 10.0, "bytes accessed": 4.0}, (10.0, 4.0)), ([{"flops": 10.0, "bytes accessed": 4.0}], (10.0, 4.0)),
    (None, (None, None)), ({"flops": -1.0}, (None, None)), ([], (None, None))])
def test_xla_cost_reads_every_backend_format(analysis, expected):
  class Compiled:
    def cost_analysis(self):
      return analysis
  assert tuple(cost.xla_cost(Compiled()).values()) == expected


@pytest.mark.parametrize("variant, key", [
    ({"label": "a", "blocks": ({"name": "nope"},)}, "cost.blocks.variants[0].blocks[0].name"),
    ({"label": "a", "blocks": ({"name": "conv", "kernel": 3},)}, "cost.blocks.variants[0].blocks[0].kernel"),
    ({"label": "a", "blocks": ({"name": "conv", "activation": "nope"},)}, "cost.blocks.variants[0].blocks[0].activation"),
    ({"label": "a", "blocks": ()}, "cost.blocks.variants[0].blocks"),
    ({"label": "a", "reference": "b", "blocks": ({"name": "conv"},)}, "cost.blocks.reference")])
def test_a_bad_variant_is_a_config_error_naming_its_key(variant, key):
  config = _small_config("cost.passes=('forward',)")
  with config.unlocked():
    config.cost.blocks.variants = (variant,)
    config.cost.blocks.reference = "a"
  with pytest.raises(ConfigError) as e:
    cost.run(config)
  assert e.value.key == key


def test_a_models_cost_agrees_with_xla_and_validates(make_config):
  report = json.loads(json.dumps(cost.run(make_config())))  # The default experiment's CNN.
  assert cost.schema_errors(report, cost.COST_SCHEMA) == []
  [row] = report["tables"][0]["settings"][0]["rows"]
  assert row["label"] == "cnn" and not row["layers"][0]["input_grad"] and row["layers"][1]["input_grad"]
  for p in row["passes"].values():
    assert p["flops_in_bounds"] == pytest.approx(p["xla_flops"], rel=flops.XLA_RTOL)


def test_bench_reports_throughput_from_the_median_step(make_config):
  result = json.loads(json.dumps(cost.bench(make_config("data.batch_size=16"), warmup=1, repeats=5)))
  assert cost.schema_errors(result, cost.BENCH_SCHEMA) == []
  median = result["seconds"]["median"]
  assert result["steps_per_second"] == pytest.approx(1 / median)
  assert result["examples_per_second"] == pytest.approx(16 / median)
  with pytest.raises(UserError):
    cost.bench(make_config(), repeats=4)


def test_cli_cost_prints_json_that_validates():
  result = run_cli("cost", "--config=experiments/cost_blocks.py", "--json", "--config.cost.blocks.batch_size=1",
                   "--config.cost.blocks.resolutions=(8,)", "--config.cost.blocks.widths=(8,)",
                   "--config.cost.passes=('forward',)", "--config.cost.blocks.variants=({'label':'3x3',"
                   "'blocks':({'name':'conv'},)},)")
  assert result.returncode == 0, result.stderr
  assert cost.schema_errors(json.loads(result.stdout), cost.COST_SCHEMA) == []


def test_cli_cost_reports_a_bad_config_in_one_line():
  result = run_cli("cost", "--config.cost.tables=('nope',)")
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      "error: config.cost.tables: names 'nope', but there is no section cost.nope"]
