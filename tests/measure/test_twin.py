"""The PyTorch twin of the reference CNN (`measure.twin_model`, `measure.twin_step`): the same
function as the JAX model, the same training step, refusals by key. torch is an optional extra:
without it this module is skipped (`test_twin_without_torch.py` runs there).
"""

import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.measure import twin_model, twin_step
from research.training import plan as plan_lib

from support import DEFAULT, ROOT, load

torch = pytest.importorskip("torch")

FASHION = os.path.join(ROOT, "experiments", "fashion_mnist.py")
SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}
# Adam's first step is lr * g / (|g| + eps): at the default eps (1e-8) a gradient near eps turns
# float32 rounding into a change of up to lr. A larger eps keeps the comparison well-conditioned and
# still tells eps outside the root (optax, torch) from eps inside it.
ADAM = {"name": "adam", "learning_rate": 2e-3, "eps": 1e-3}


def _config(path: str, *overrides: str, optimizer: dict | None = None) -> ml_collections.ConfigDict:
  config = load(*overrides, path=path)
  if optimizer is not None:
    config.optimizer = ml_collections.ConfigDict(optimizer)
  return config


def _variables(config: ml_collections.ConfigDict, seed: int = 0) -> tuple[object, dict, tuple]:
  """(the JAX model, its variables with every bias, BatchNorm scale and running statistic moved
  off its initial value, one example's shape)."""
  plan = plan_lib.make_plan(config, static=True)
  shape = plan.dataset.shape
  variables = plan.model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)), train=False)
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name == "scale":
      return leaf + jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
    if name in ("bias", "mean"):
      return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
    return leaf

  return plan.model, jax.tree_util.tree_map_with_path(perturb, variables), shape


def _images(shape: tuple, n: int = 4, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


FORWARD_CASES = [
  pytest.param(DEFAULT, (), id="default"),
  pytest.param(FASHION, (), id="fashion_mnist-batchnorm-conv"),
  pytest.param(FASHION, ("model.block=factorized",), id="fashion_mnist-batchnorm-factorized"),
  pytest.param(DEFAULT, ("model.activation=tanh",), id="tanh"),
  pytest.param(DEFAULT, ("model.block=factorized", "model.norm=False"), id="factorized-bias"),
  pytest.param(
    DEFAULT, ("model.kernel_size=4", "model.padding=VALID", "model.widths=(8,)"), id="4x4-valid"
  ),
  pytest.param(DEFAULT, ("model.kernel_size=2", "model.widths=(8, 8)"), id="2x2-same-uneven"),
  *(
    pytest.param(DEFAULT, (f"model.activation={name}", "model.widths=(8,)"), id=name)
    for name in ("sigmoid", "gelu", "leaky_relu", "elu", "silu", "identity")
  ),
  pytest.param(
    DEFAULT,
    ("model.activation=leaky_relu", "model.negative_slope=0.3", "model.widths=(8,)"),
    id="leaky_relu-slope",
  ),
]


@pytest.mark.parametrize("path, overrides", FORWARD_CASES)
def test_twin_computes_the_jax_models_logits_in_inference_mode(path, overrides):
  config = _config(path, *overrides)
  model, variables, shape = _variables(config)
  images = _images(shape)
  twin = twin_model.twin(config, variables).eval()
  with torch.no_grad():
    logits = twin(torch.from_numpy(images)).numpy()
  expected = np.asarray(model.apply(variables, images, train=False))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block", ["conv", "factorized"])
def test_twin_in_training_mode_normalizes_by_the_batch_and_updates_statistics_as_flax(block):
  # Flax keeps 0.9 of a running statistic and adds 0.1 of the batch's biased variance; torch's
  # BatchNorm2d would add its unbiased variance.
  config = _config(FASHION, f"model.block={block}")
  model, variables, shape = _variables(config)
  images = _images(shape, n=3)  # n / (n - 1) = 1.5 would show with torch's unbiased variance.
  twin = twin_model.twin(config, variables).train()
  with torch.no_grad():
    logits = twin(torch.from_numpy(images)).numpy()
  expected, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, np.asarray(expected), rtol=1e-4, atol=1e-5)
  jax.tree.map(
    lambda want, got: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
    updates["batch_stats"],
    twin_model.variables_of(twin)["batch_stats"],
  )


def test_twin_gives_back_the_jax_variables_it_was_given():
  config = _config(FASHION, "model.block=factorized")
  _, variables, _ = _variables(config)
  back = twin_model.variables_of(twin_model.twin(config, variables))
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


@pytest.mark.parametrize(
  "path, overrides, optimizer",
  [
    pytest.param(DEFAULT, (), SGD, id="default-sgd-momentum"),
    pytest.param(FASHION, ("data.batch_size=16",), SGD, id="fashion_mnist-batchnorm-sgd-momentum"),
    pytest.param(DEFAULT, ("model.activation=tanh",), ADAM, id="tanh-adam"),
    pytest.param(
      FASHION, ("data.batch_size=16", "model.block=factorized"), ADAM, id="factorized-bn-adam"
    ),
  ],
)
def test_one_twin_step_equals_one_jax_train_step(path, overrides, optimizer):
  result = twin_step.numerics_check(_config(path, *overrides, optimizer=optimizer))
  assert result["update"] > 1e-3  # The step moved the parameters: the comparison is not vacuous.
  assert result["loss"] <= 1e-4 * result["loss_value"]
  assert result["logits"] <= 1e-5
  assert result["grads"] <= 1e-5 and result["grads_relative"] <= 1e-4
  assert result["params"] <= 1e-5 and result["params_relative"] <= 1e-4
  assert result["batch_stats"] <= 1e-5


def test_adam_at_its_default_eps_agrees_in_loss_and_gradients():
  result = twin_step.numerics_check(_config(DEFAULT, "model.widths=(8,)"))
  assert result["loss"] <= 1e-5 and result["logits"] <= 1e-5
  assert result["grads_relative"] <= 1e-4


def test_twin_step_takes_optaxs_sgd_and_adam_arguments_and_refuses_others():
  config = _config(DEFAULT, "model.widths=(4,)", "model.hidden=8")
  _, variables, _ = _variables(config)
  module = twin_model.twin(config, variables)
  step = twin_step.twin_step(module, "sgd", 0.1, 0.9, nesterov=True)
  assert step.optimizer.defaults["nesterov"] and step.optimizer.defaults["momentum"] == 0.9
  step = twin_step.twin_step(module, "sgd", 0.1, 0.0, nesterov=True)  # optax takes it; plain sgd.
  assert step.optimizer.defaults["momentum"] == 0 and not step.optimizer.defaults["nesterov"]
  step = twin_step.twin_step(module, "adam", 1e-3, b1=0.8, b2=0.99, eps=1e-6)
  assert step.optimizer.defaults["betas"] == (0.8, 0.99) and step.optimizer.defaults["eps"] == 1e-6
  with pytest.raises(ValueError, match=r"optimizer\.name"):
    twin_step.twin_step(module, "rmsprop", 1e-3)
  with pytest.raises(ValueError, match=r"optimizer\.weight_decay"):
    twin_step.twin_step(module, "sgd", 0.1, weight_decay=1e-4)


@pytest.mark.parametrize(
  "override, key",
  [
    ("model.name=resnet", "model.name"),
    ("model.block=separable", "model.block"),
    ("model.head=gap", "model.head"),
    ("model.stage_blocks=('conv','factorized')", "model.stage_blocks"),
  ],
)
def test_an_unsupported_config_is_a_value_error_naming_its_key(override, key):
  with pytest.raises(ValueError, match=re.escape(f"config.{key}:")):
    twin_model.twin(load(override), {"params": {}})


def test_variables_that_do_not_fit_the_twin_are_refused_by_path():
  config = _config(DEFAULT)
  _, variables, _ = _variables(config)
  wider = _config(DEFAULT, "model.widths=(32, 64, 128)")
  with pytest.raises(ValueError, match="ConvBlock_2/Conv_0/kernel"):
    twin_model.twin(wider, variables)


def test_bench_twin_reports_the_median_step_and_torchs_threads():
  config = _config(DEFAULT, "data.batch_size=8", "model.widths=(4,)", "model.hidden=8")
  result = twin_step.bench_twin(config, warmup=1, repeats=5)
  assert result["torch_version"] == torch.__version__
  assert result["threads"] == torch.get_num_threads()
  assert result["seconds"]["n"] == 5 and result["seconds"]["warmup"] == 1
  assert result["seconds"]["min"] <= result["seconds"]["median"] <= result["seconds"]["max"]
  assert result["examples_per_second"] == pytest.approx(8 / result["seconds"]["median"])
