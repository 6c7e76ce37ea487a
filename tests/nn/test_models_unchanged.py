"""Models built of block callables (issue 20) are the models of b9724d8, which built them by name.

The reference is the old code itself: `research/nn/blocks.py` and `models.py` as of b9724d8, read
from git and run beside the new ones. Flax draws each parameter from the seed and the parameter's
path, so equal paths and shapes give equal values; equal values and equal outputs in training mode
(logits and BatchNorm statistics, bit for bit) mean the same training numbers, and committed runs
and results stay reproducible.
"""

import subprocess
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.nn import models

from support import ROOT, load

REFERENCE = "b9724d8"


def _old_source(path: str) -> str:
  try:
    return subprocess.run(
      ["git", "show", f"{REFERENCE}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f"needs git and commit {REFERENCE} (a full clone): {e}")


def _module(name: str, source: str, **names) -> types.ModuleType:
  module = types.ModuleType(name)
  vars(module).update(names)
  exec(compile(source, f"{REFERENCE}:{name}", "exec"), vars(module))
  return module


@pytest.fixture(scope="module")
def old_models() -> types.ModuleType:
  """b9724d8's `research.nn.models`, over its own `research.nn.blocks`."""
  blocks = _module("blocks", _old_source("research/nn/blocks.py"))
  source = _old_source("research/nn/models.py")
  line = "from research.nn.blocks import BLOCKS, HEADS, Pointwise, fields, make, make_block\n"
  assert line in source
  names = ("BLOCKS", "HEADS", "Pointwise", "fields", "make", "make_block")
  return _module("models", source.replace(line, ""), **{n: getattr(blocks, n) for n in names})


def _models(old_models, experiment, overrides, shape) -> tuple:
  """(new model, old model) of `experiment`'s model config with `overrides`, on `shape`."""
  config = load(path=f"{ROOT}/experiments/{experiment}.py").model
  with config.unlocked():
    config.update(overrides)
  return models.build_model(config, 10, shape), old_models.build_model(config, 10, shape)


CASES = [  # (experiment, model overrides, input shape): every model, block, head and setting.
  ("default", {}, (8, 8, 1)),
  (
    "default",
    {"block": "factorized", "activation": "leaky_relu", "negative_slope": 0.2},
    (8, 8, 1),
  ),
  ("default", {"block": "bottleneck", "reduction": 2, "norm": True}, (8, 8, 1)),
  ("default", {"block": "separable", "padding": "VALID", "kernel_size": 2}, (9, 9, 1)),
  ("default", {"block": "pointwise", "lowering": "im2col", "head": "gap"}, (8, 8, 3)),
  ("default", {"name": "plain", "widths": (4,) * 6, "pool_every": 3}, (8, 8, 1)),
  ("fashion_mnist", {"stage_blocks": ("factorized", "conv")}, (28, 28, 1)),
  ("resnet", {}, (8, 8, 1)),
  ("resnet", {"stage_blocks": ("pointwise", "bottleneck")}, (8, 8, 1)),
  ("fashion_resnet", {"block": "factorized"}, (12, 12, 1)),
  ("inception", {"block": "pointwise"}, (8, 8, 1)),
  ("inception", {"stage_blocks": ("separable", "conv"), "head": "dense"}, (8, 8, 2)),
]
IDS = [f"{case[0]}-{i}" for i, case in enumerate(CASES)]


def _leaves(tree) -> list[tuple[str, tuple, str]]:
  return [
    (jax.tree_util.keystr(path), leaf.shape, str(leaf.dtype))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  ]


@pytest.mark.parametrize("experiment, overrides, shape", CASES, ids=IDS)
def test_parameter_paths_and_shapes_equal_the_old_code(old_models, experiment, overrides, shape):
  """Flax draws a parameter from the seed and its path: equal paths, shapes and initializers
  (the same `Conv`, `Dense` and `BatchNorm`) give equal values."""
  new, old = _models(old_models, experiment, overrides, shape)
  x = jnp.zeros((1, *shape))
  assert _leaves(jax.eval_shape(new.init, jax.random.PRNGKey(0), x)) == _leaves(
    jax.eval_shape(old.init, jax.random.PRNGKey(0), x)
  )


@pytest.mark.parametrize(
  "experiment, overrides, shape",
  # The default experiment (its metrics.jsonl must stay byte-identical); the others, each
  # compiling two models, with `-m slow` (the paths and shapes above cover them all).
  [CASES[0], *(pytest.param(*case, marks=pytest.mark.slow) for case in CASES[1:])],
  ids=IDS,
)
def test_values_and_training_outputs_equal_the_old_code(old_models, experiment, overrides, shape):
  new, old = _models(old_models, experiment, overrides, shape)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))

  @jax.jit
  def run(x):
    results = []
    for model in (new, old):
      variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
      logits, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
      results.append((variables, logits, stats))
    return results

  (new_results, old_results) = run(x)
  jax.tree.map(np.testing.assert_array_equal, new_results, old_results)
