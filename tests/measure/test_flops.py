"""Analytic counts (`measure.flops`) against hand-computed values and against XLA's own count."""

import os

import jax
import jax.numpy as jnp
import optax
import pytest

from research import config as config_lib
from research.measure import flops, subjects, xla
from research.nn import blocks

from support import ROOT

# Hand counts for a [2, 10, 10, 24] input and 32 output channels: 200 output pixels (SAME,
# stride 1).
SHAPE, WIDTH, PIXELS = (2, 10, 10, 24), 32, 200
HAND = {  # block: (parameters, forward MACs, forward bias adds)
  "conv": (9 * 24 * 32 + 32, PIXELS * 9 * 24 * 32, PIXELS * 32),
  # mid = min(24, 32): 3x1 24 -> 24, then 1x3 24 -> 32.
  "factorized": (
    3 * 24 * 24 + 24 + 3 * 24 * 32 + 32,
    PIXELS * (3 * 24 * 24 + 3 * 24 * 32),
    PIXELS * (24 + 32),
  ),
  "pointwise": (24 * 32 + 32, PIXELS * 24 * 32, PIXELS * 32),
  # mid = 32 // 4: 1x1 24 -> 8, 3x3 8 -> 8, 1x1 8 -> 32.
  "bottleneck": (
    24 * 8 + 8 + 9 * 8 * 8 + 8 + 8 * 32 + 32,
    PIXELS * (24 * 8 + 9 * 8 * 8 + 8 * 32),
    PIXELS * (8 + 8 + 32),
  ),
  # depthwise 3x3 (24 groups) 24 -> 24, then 1x1 24 -> 32.
  "separable": (9 * 24 + 24 + 24 * 32 + 32, PIXELS * (9 * 24 + 24 * 32), PIXELS * (24 + 32)),
}


def _counted(name, shape=SHAPE, width=WIDTH, **kwargs):
  module = blocks.build_block({"name": name, **kwargs}, width, "model.block")
  return module, flops.layers(module, jax.ShapeDtypeStruct(shape, jnp.float32))


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
  assert (
    totals.forward_backward_flops == 6 * macs + 2 * bias_adds
  )  # Weight and input gradients, bias sums.
  assert (
    totals.train_step_flops
    == totals.forward_backward_flops + flops.OPTIMIZER_FLOPS["adam"] * params
  )


def test_a_model_skips_the_input_gradient_of_the_layer_reading_the_data():
  model = blocks.build_block(
    {"name": "conv"}, 4, "model.block"
  )  # One layer: its input is the data.
  [layer] = flops.layers(model, jnp.zeros((1, 5, 5, 3)), input_grad=False)
  assert (
    not layer.input_grad and layer.forward_backward_flops == 4 * layer.macs + 2 * layer.bias_adds
  )


def test_in_bounds_macs_exclude_the_taps_on_same_padding():
  _, [layer] = _counted("conv")
  assert (
    layer.macs_in_bounds == 2 * 28 * 28 * 24 * 32
  )  # Per axis 10 outputs x 3 taps, less the 2 outside.


@pytest.mark.parametrize(
  "kwargs",
  [
    {"kernel_size": 3, "padding": "SAME"},
    {"kernel_size": 3, "strides": 2, "padding": "SAME"},
    {"kernel_size": (5, 3), "strides": (2, 1), "dilation": 2, "padding": "SAME"},
    {"kernel_size": 3, "padding": "VALID"},
    {"kernel_size": 3, "padding": ((2, 0), (1, 1))},
    {"kernel_size": 4, "strides": 3, "padding": "SAME"},
    {"kernel_size": 3, "groups": 4},
  ],
)
def test_in_bounds_macs_are_exactly_xlas_count_for_a_bare_convolution(kwargs):
  module, x = blocks.Conv(16, use_bias=False, **kwargs), jnp.ones((2, 9, 11, 16))
  [layer] = flops.layers(module, x)
  variables = jax.tree.map(
    lambda s: jnp.ones(s.shape), jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  )
  counted = xla.xla_cost(jax.jit(module.apply).lower(variables, x).compile())["flops"]
  assert counted == pytest.approx(2 * layer.macs_in_bounds, rel=1e-9)


def test_a_blocks_train_step_adds_the_optimizers_flops_to_forward_backward():
  subject = subjects.block_subject(
    "3x3",
    blocks.build_block({"name": "conv"}, 16, "model.block"),
    (2, 8, 8, 16),
    optax.adam(1e-3),
    lambda n: flops.optimizer_flops("adam", n),
  )
  counted = {
    name: xla.compile_pass(*subject.passes[name])[1]["xla_flops"]
    for name in ("forward_backward", "train_step")
  }
  optimizer = subject.totals.train_step_flops - subject.totals.forward_backward_flops
  assert optimizer == flops.OPTIMIZER_FLOPS["adam"] * (9 * 16 * 16 + 16)
  assert counted["train_step"] - counted["forward_backward"] == pytest.approx(optimizer, rel=0.15)


@pytest.mark.parametrize("name", sorted(flops.OPTIMIZER_FLOPS))
def test_optimizer_flops_per_parameter_are_within_15_percent_of_xlas(name):
  params = {"w": jnp.ones((10_000,))}
  tx = getattr(optax, name)(1e-3)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step).lower(params, tx.init(params), params).compile()
  assert xla.xla_cost(compiled)["flops"] / 10_000 == pytest.approx(
    flops.OPTIMIZER_FLOPS[name], rel=0.15
  )


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
  assert block == (2 * 256 * 64 + 6 * 64 * 64) / (
    2 * 256 * 64 + 9 * 64 * 64
  )  # ... the block: 0.824.
  assert 0.17 < 1 - block < 0.19


def _experiment_macs(name: str) -> dict:
  """{(table, label): forward MACs} of every variant of a shipped experiment, counted without
  compiling."""
  config = config_lib.load_config(os.path.join(ROOT, "experiments", name))
  out = {}
  for table in config.cost.tables:
    section = config.cost[table]
    for variant in section.variants:
      for res in section.resolutions:
        for width in section.widths:
          c_in = (section.in_channels or (width,))[0]
          x = jax.ShapeDtypeStruct((section.batch_size, res, res, c_in), jnp.float32)
          out[table, variant["label"]] = sum(
            l.macs for l in flops.layers(subjects.variant_module(variant, width, "v"), x)
          )
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
    macs["blocks", "1x1 bottleneck"] * (2 * 64 * 16 + 6 * 16 * 16)
  )
