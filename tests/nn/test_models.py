"""Models from config: the reference CNN by hand, every KxK swappable by one value, errors before
compiling."""

import collections
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import ConfigError
from research.measure import flops
from research.nn import activations, blocks, heads, models
from research.training import train

from support import ROOT, run_cli

BLOCK_NAMES = ("conv", "factorized", "bottleneck", "separable", "pointwise")


def build(input_shape=(8, 8, 1), **fields):
  return models.build_model(ml_collections.ConfigDict(fields), 10, input_shape)


def n_params(model, input_shape=(8, 8, 1)) -> int:
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape))))
  return sum(p.size for p in jax.tree.leaves(v["params"]))


def test_reference_cnn_has_the_flax_mnist_example_parameter_count():
  # 28x28x1: conv 3x3 1->32, pool -> 14x14, conv 3x3 32->64, pool -> 7x7, dense 3136->256, dense
  # 256->10.
  want = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 256 + 256) + (256 * 10 + 10)
  assert n_params(build((28, 28, 1), name="cnn"), (28, 28, 1)) == want == 824_458


def test_block_swap_changes_every_kxk_conv():
  # cnn on 8x8x1, widths (32, 64); dense head sees 2x2x64.
  head = (2 * 2 * 64 * 256 + 256) + (256 * 10 + 10)
  full = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64)
  factorized = (3 * 1 * 1 + 1 + 3 * 1 * 32 + 32) + (
    3 * 32 * 32 + 32 + 3 * 32 * 64 + 64
  )  # mid = min(cin, cout)
  separable = (9 * 1 + 1 + 1 * 32 + 32) + (9 * 32 + 32 + 32 * 64 + 64)
  assert n_params(build(name="cnn", block="conv")) == full + head
  assert n_params(build(name="cnn", block="factorized")) == factorized + head
  assert n_params(build(name="cnn", block="separable")) == separable + head


def test_stage_blocks_choose_the_block_of_each_stage():
  # As above: stage 0 is the 1->32 convolution, stage 1 the 32->64 one.
  head = (2 * 2 * 64 * 256 + 256) + (256 * 10 + 10)
  full = [9 * 1 * 32 + 32, 9 * 32 * 64 + 64]
  factorized = [3 * 1 * 1 + 1 + 3 * 1 * 32 + 32, 3 * 32 * 32 + 32 + 3 * 32 * 64 + 64]
  assert n_params(build(name="cnn", stage_blocks=("conv", "factorized"))) == (
    full[0] + factorized[1] + head
  )
  assert n_params(build(name="cnn", stage_blocks=("factorized", "conv"))) == (
    factorized[0] + full[1] + head
  )
  # `block` is ignored where stage_blocks are given; all-"conv" stages are the plain model.
  assert n_params(build(name="cnn", block="factorized", stage_blocks=("conv", "conv"))) == (
    sum(full) + head
  )


def test_model_reduction_sets_the_bottleneck_width():
  # cnn widths (32, 64) on 8x8x1 with 1x1 -> 3x3 -> 1x1 bottlenecks to width // 2: 16, then 32.
  head = (2 * 2 * 64 * 256 + 256) + (256 * 10 + 10)
  first = (1 * 16 + 16) + (9 * 16 * 16 + 16) + (16 * 32 + 32)
  second = (32 * 32 + 32) + (9 * 32 * 32 + 32) + (32 * 64 + 64)
  assert n_params(build(name="cnn", block="bottleneck", reduction=2)) == first + second + head
  # Other blocks have no reduction: it changes nothing there.
  assert n_params(build(name="cnn", block="conv", reduction=2)) == n_params(build(name="cnn"))


def test_the_plain_stack_pools_after_every_pool_every_blocks():
  # 8 convs of width 4 on 16x16x1, a 2x2 pool after convs 2, 4 and 6: 16 -> 8 -> 4 -> 2; the dense
  # head sees 2x2x4.
  model = build((16, 16, 1), name="plain", widths=(4,) * 8, pool_every=2, hidden=8)
  convs = (9 * 1 * 4 + 4) + 7 * (9 * 4 * 4 + 4)
  head = (2 * 2 * 4 * 8 + 8) + (8 * 10 + 10)
  assert n_params(model, (16, 16, 1)) == convs + head
  # Pooling every 3: after convs 3 and 6 only, 16 -> 8 -> 4.
  model = build((16, 16, 1), name="plain", widths=(4,) * 8, pool_every=3, hidden=8)
  assert n_params(model, (16, 16, 1)) == convs + (4 * 4 * 4 * 8 + 8) + (8 * 10 + 10)


def test_resnet_stage_blocks_put_the_stem_in_the_first_stage():
  """ResNet widths (16, 32) at 8x8: the stem and stage 0's two residual blocks (4 KxK) in one
  block, stage 1's two residual blocks (4 KxK) in the other: kernels by hand."""
  model = build(name="resnet", widths=(16, 32), stage_sizes=(2, 2), head="gap", norm=True,
                stage_blocks=("conv", "factorized"))  # fmt: skip
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
  kernels = [
    p.shape[:2] for p in jax.tree.leaves(v["params"]) if p.ndim == 4 and p.shape[:2] != (1, 1)
  ]
  assert collections.Counter(kernels) == {(3, 3): 1 + 4, (3, 1): 4, (1, 3): 4}


def test_a_model_takes_its_block_and_head_as_callables():
  """`build_model`'s names become the callables a model is built of: a CNN given a `partial` of
  `Factorized` (5x5, VALID, tanh) and a GAP head by hand is the model the config names."""
  config = {"block": "factorized", "kernel_size": 5, "padding": "VALID", "activation": "tanh"}
  by_name = build((16, 16, 1), name="cnn", widths=(4, 8), head="gap", **config)
  block = functools.partial(
    blocks.Factorized, kernel_size=5, padding="VALID", activation=activations.get("tanh")
  )
  by_hand = models.CNN(10, block=block, head=heads.GAPHead, widths=(4, 8))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 1))
  variables = jax.jit(by_hand.init)(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(
    jax.eval_shape(by_name.init, jax.random.PRNGKey(0), x)
  )
  np.testing.assert_array_equal(
    jax.jit(by_hand.apply)(variables, x), jax.jit(by_name.apply)(variables, x)
  )


class CountingDict(dict):
  """A registry that counts the names looked up in it."""

  def __init__(self, *args):
    super().__init__(*args)
    self.lookups = collections.Counter()

  def __getitem__(self, name):
    self.lookups[name] += 1
    return super().__getitem__(name)


def test_names_are_looked_up_once_when_the_model_is_built_and_never_after(monkeypatch):
  registry = CountingDict(models.BLOCKS)
  monkeypatch.setattr(models, "BLOCKS", registry)  # The registry, not a code path.
  model = build(name="resnet", block="bottleneck", stage_blocks=("conv", "factorized"))
  assert registry.lookups == {"bottleneck": 1, "conv": 1, "factorized": 1}
  x = jnp.ones((2, 8, 8, 1))
  jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x), x))
  assert registry.lookups == {"bottleneck": 1, "conv": 1, "factorized": 1}


def test_settings_are_bound_where_the_block_has_the_field():
  # A model gives every block its window; a 1x1 block has none, and keeps its stride.
  block = models.bind(blocks.Pointwise, kernel_size=5, padding="VALID", strides=2)(8)
  assert isinstance(block, blocks.Pointwise) and block.strides == 2
  y = jax.eval_shape(block.init_with_output, jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))[0]
  assert y.shape == (1, 3, 3, 8)
  assert models.bind(blocks.Factorized, kernel_size=5, reduction=2)(8).kernel_size == 5


@pytest.mark.parametrize("name", ["cnn", "resnet", "inception"])
@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_every_model_and_block_gives_logits(name, block):
  model = build(name=name, block=block)
  x = jnp.ones((3, 8, 8, 1))
  variables = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), x
  )  # Shapes only; training tests run numbers.
  logits, _ = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
  )
  assert logits.shape == (3, 10)


# KxK convolutions per model with its defaults, counted by hand: cnn one per width (32, 64); resnet
# a stem
# and two per residual block, 2 + 2 blocks; inception a stem and three per module (one in the 1x1 ->
# KxK
# branch, two in the 1x1 -> KxK -> KxK branch), two modules.
KXK_LAYERS = {"cnn": 2, "resnet": 1 + 2 * (2 + 2), "inception": 1 + 3 * 2}


def _windows(name, block) -> tuple[collections.Counter, list]:
  """(count of each conv window, the 3x3 layers) of model `name` with `block`, on 8x8x1."""
  found = flops.layers(build(name=name, block=block), jnp.zeros((1, 8, 8, 1)), train=False)
  convs = [layer for layer in found if layer.kind == "conv"]
  return collections.Counter(layer.window for layer in convs), [
    layer for layer in convs if layer.window == (3, 3)
  ]


@pytest.mark.parametrize("name", sorted(KXK_LAYERS))
@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_the_block_replaces_every_kxk_convolution_of_the_model(name, block):
  n = KXK_LAYERS[name]
  base, _ = _windows(name, "conv")
  windows, kxk = _windows(name, block)
  if block == "conv":
    assert windows[3, 3] == n
  elif block == "factorized":  # Each KxK became a 3x1 then a 1x3; nothing else changed.
    assert (windows[3, 3], windows[3, 1], windows[1, 3]) == (0, n, n)
    assert windows[1, 1] == base[1, 1]
  elif block == "bottleneck":  # A 1x1 reduce and a 1x1 expand around each KxK.
    assert windows[3, 3] == n and windows[1, 1] == base[1, 1] + 2 * n
  elif block == "separable":  # Each KxK depthwise (one group per channel), then a 1x1.
    assert len(kxk) == n and all(layer.groups == layer.input_shape[-1] for layer in kxk)
    assert windows[1, 1] == base[1, 1] + n
  else:  # pointwise: each KxK became a 1x1.
    assert windows[3, 3] == 0 and windows[1, 1] == base[1, 1] + n


@pytest.mark.parametrize("input_shape", [(16, 2), (8, 8, 3), (8, 8, 8, 1)])
def test_models_run_in_1_2_and_3_spatial_dims(input_shape):
  for name in ("cnn", "resnet"):
    model = build(input_shape, name=name, block="factorized", widths=(4, 8))
    x = jnp.ones((2, *input_shape))
    logits = jax.jit(model.apply)(jax.jit(model.init)(jax.random.PRNGKey(0), x), x)
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())


def test_resnet_residual_blocks_and_projection():
  params = jax.eval_shape(
    lambda: build(name="resnet").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  )["params"]
  blocks = sorted(k for k in params if k.startswith("ResidualBlock"))
  assert blocks == [f"ResidualBlock_{i}" for i in range(4)]
  assert (
    "Pointwise_0" in params["ResidualBlock_2"]
  )  # Stage 2 changes width and stride: 1x1 projection.
  assert "Pointwise_0" not in params["ResidualBlock_1"]


def test_inception_module_concatenates_four_quarter_width_branches():
  model = build(name="inception", widths=(32,), head="gap")
  x = jnp.ones((1, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  _, state = model.apply(variables, x, capture_intermediates=True)
  out = state["intermediates"]["InceptionModule_0"]["__call__"][0]
  assert out.shape == (1, 8, 8, 32)


@pytest.mark.parametrize(
  "fields, key, words",
  [
    ({"name": "cnn", "widths": (0, 32)}, "model.widths", "positive"),
    ({"name": "cnn", "widths": (-4,)}, "model.widths", "positive"),
    ({"name": "cnn", "hidden": 0}, "model.hidden", "positive"),
    ({"name": "cnn", "kernel_size": 9, "padding": "VALID"}, "model.kernel_size", "does not fit"),
    ({"name": "cnn", "widths": (8, 8, 8, 8)}, "model.widths", "too small"),
    ({"name": "cnn", "block": "fourier"}, "model.block", "unknown block"),
    ({"name": "cnn", "activation": "swish"}, "model.activation", "unknown activation"),
    ({"name": "cnn", "head": "mlp"}, "model.head", "unknown head"),
    ({"name": "cnn", "lowering": "fft"}, "model.lowering", "unknown lowering"),
    ({"name": "cnn", "depth": 3}, "model.depth", "no such field"),
    ({"name": "mlp"}, "model.name", "unknown model"),
    ({"name": "resnet", "stage_sizes": (1,)}, "model.stage_sizes", "one entry per width"),
    ({"name": "inception", "widths": (12,)}, "model.widths", "multiple of 8"),
    ({"name": "cnn", "padding": "FULL"}, "model.padding", "padding"),
    ({"name": "cnn", "stage_blocks": ("conv",)}, "model.stage_blocks", "one block per width"),
    ({"name": "cnn", "stage_blocks": ("conv", "3x3")}, "model.stage_blocks", "unknown block"),
  ],
)
def test_impossible_model_is_a_config_error_naming_the_field(fields, key, words):
  with pytest.raises(ConfigError) as e:
    build(**fields)
  assert e.value.key == key and words in str(e.value)


def test_bad_model_fails_before_compiling_or_writing(tmp_path, data_dir):
  workdir = tmp_path / "run"
  result = run_cli(
    "train",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.model.kernel_size=9",
    "--config.model.padding=VALID",
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    "error: config.model.kernel_size: a kernel spanning 9 pixels (size 9, dilation 1) does not "
    "fit an input of "
    "8 pixels with padding VALID (input 8x8x1)"
  ]
  assert not workdir.exists()


@pytest.mark.parametrize(
  "experiment, block",
  [
    ("default", "factorized"),
    # Slow; test_the_block_replaces_every_kxk_convolution_of_the_model covers the swap in a ResNet.
    pytest.param("resnet", "separable", marks=pytest.mark.slow),
  ],
)
def test_swapped_blocks_train(make_config, tmp_path, experiment, block):
  config = make_config(
    "train.num_epochs=2",
    f"model.block={block}",
    path=os.path.join(ROOT, "experiments", f"{experiment}.py"),
  )
  record = train.train_and_evaluate(config, str(tmp_path))
  assert record["test_accuracy"] > 0.6  # Chance is 0.1.
