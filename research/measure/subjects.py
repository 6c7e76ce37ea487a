"""What `run.py cost` measures: subjects, each a module at one input shape with its passes.

A subject is a block variant (`block_subject`: one or more blocks from a `config.cost` table, on
random inputs) or a config's model (`model_subject`: its train step is `training.state.train_step`
itself). Its passes are (function, arguments) pairs, ready to compile and time:
  forward           apply, inference mode
  forward_backward  forward plus the vector-Jacobian product for a given output cotangent: gradients
                    of the parameters and (blocks, which sit inside a network) of the input
  train_step        forward_backward plus the optimizer update
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research.errors import ConfigError
from research.measure import flops
from research.nn import blocks, shapes
from research.training.optim import build_optimizer


@dataclasses.dataclass
class Subject:
  """A module at one input shape: its counted layers, parameters, and each pass as
  (function, arguments)."""

  label: str
  layers: list[flops.Layer]
  totals: flops.Totals
  passes: dict[str, tuple[Callable[..., Any], tuple]]
  plan: Any = None  # A model's `training.plan.Plan` (`model_subject`); None for block variants.


class Stack(nn.Module):
  """Blocks applied in order, `[b, *s, c]` -> the last block's output
  (a variant of several blocks)."""

  layers: tuple[nn.Module, ...]

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for layer in self.layers:
      x = layer(x, train)
    return x


def _split(variables: dict) -> tuple[Any, dict]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _train_apply(module: nn.Module, params, rest: dict, x):
  """`module` in training mode; BatchNorm statistics are computed but their update is dropped."""
  out = module.apply({"params": params, **rest}, x, train=True, mutable=list(rest) or False)
  return out[0] if rest else out


def _passes(
  module: nn.Module,
  variables: dict,
  x: jnp.ndarray,
  cotangent: jnp.ndarray,
  input_grad: bool,
  tx: optax.GradientTransformation,
) -> dict[str, tuple[Callable[..., Any], tuple]]:
  """The three passes of `module` on `x`; backward starts from `cotangent` (the output's shape)."""
  params, rest = _split(variables)

  def forward(variables, x):
    return module.apply(variables, x, train=False)

  def forward_backward(params, rest, x, cotangent):
    if input_grad:
      _, vjp = jax.vjp(lambda p, x: _train_apply(module, p, rest, x), params, x)
      return vjp(cotangent)
    _, vjp = jax.vjp(lambda p: _train_apply(module, p, rest, x), params)
    return vjp(cotangent)

  def train_step(params, opt_state, rest, x, cotangent):
    grads = forward_backward(params, rest, x, cotangent)
    updates, opt_state = tx.update(grads[0], opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads[1:]

  return {
    "forward": (forward, (variables, x)),
    "forward_backward": (forward_backward, (params, rest, x, cotangent)),
    "train_step": (train_step, (params, tx.init(params), rest, x, cotangent)),
  }


def variant_module(variant: dict, width: int, key: str) -> nn.Module:
  """The module of one variant: its `blocks` (`{"name": ..., **block fields}`) in order, each with
  `width` output channels unless it sets `features`. Activations are given by name."""
  specs = variant.get("blocks")
  if not specs:
    raise ConfigError(
      f"{key}.blocks", "a variant needs at least one block, e.g. blocks=({'name': 'conv'},)"
    )
  modules = [blocks.build_block(spec, width, f"{key}.blocks[{j}]") for j, spec in enumerate(specs)]
  return modules[0] if len(modules) == 1 else Stack(tuple(modules))


def _filled(tree: Any, rng: np.random.Generator) -> Any:
  """Arrays of the shapes in `tree`: matrices N(0, 1/fan_in), vectors ones
  (biases, BatchNorm statistics).

  The values do not change the cost. NumPy draws them because a `jax.random` kernel is compiled for
  every new shape, which takes longer than the rest of a small table.
  """

  def fill(leaf):
    if len(leaf.shape) < 2:
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1])
    return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), leaf.dtype)

  return jax.tree.map(fill, tree)


def block_subject(
  label: str,
  module: nn.Module,
  input_shape: Sequence[int],
  tx: optax.GradientTransformation,
  optimizer_flops_per_param: Callable[[int], int],
  seed: int = 0,
  key: str = "cost",
) -> Subject:
  """A block (or `Stack`) on `input_shape` `[batch, *spatial, c_in]` float32 inputs;
  gradients include the input's."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  try:
    found = flops.layers(module, x, input_grad=True)
  except shapes.ShapeError as e:
    raise ConfigError(
      f"{key}.{e.field}", f"{e} (input {'x'.join(map(str, input_shape))})"
    ) from None
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  y = jax.eval_shape(module.apply, abstract, x)
  rng = np.random.default_rng(seed)
  variables, x = _filled(abstract, rng), jnp.asarray(rng.standard_normal(x.shape), x.dtype)
  cotangent = jnp.asarray(rng.standard_normal(y.shape), y.dtype)
  params = flops.param_count(variables)
  return Subject(
    label,
    found,
    flops.totals(found, params, optimizer_flops_per_param(params)),
    _passes(module, variables, x, cotangent, True, tx),
  )


def model_inputs(config: ml_collections.ConfigDict) -> tuple[Any, Any, dict, np.random.Generator]:
  """(plan, initial train state, one random batch, the generator past it) for the config's model at
  the plan's batch size: the batch is NumPy's `standard_normal` images (float32) and `integers`
  labels (int32) from `config.seed`, of the dataset's shape (no data is read, nothing is
  prepared). A model too large for memory is refused from its shapes first. The one setup of
  `model_subject` and of the PyTorch twin (`measure.twin_step`)."""
  # TFDS and Orbax are slow to import: only for models.
  from research.training import memory
  from research.training import plan as plan_lib
  from research.training import state as state_lib

  plan = plan_lib.make_plan(config, static=True)
  memory.check(plan, plan.batch_size)  # Refused from shapes, before anything is allocated.
  state = state_lib.create_train_state(plan.model, plan.tx, config.seed, plan.dataset.shape)
  rng = np.random.default_rng(config.seed)  # NumPy: see `_filled`.
  batch_shape = (plan.batch_size, *plan.dataset.shape)
  batch = {
    "image": rng.standard_normal(batch_shape).astype(np.float32),
    "label": rng.integers(0, plan.dataset.num_classes, batch_shape[:1]).astype(np.int32),
  }
  return plan, state, batch, rng


def model_subject(config: ml_collections.ConfigDict) -> Subject:
  """The config's model (`training.plan.make_plan`) at the plan's batch size, on one random batch
  of its dataset's shape (`model_inputs`); the train step is `training.state.train_step` itself,
  unjitted."""
  from research.training import state as state_lib

  plan, state, batch, rng = model_inputs(config)
  batch = {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])}
  found = flops.layers(plan.model, batch["image"], input_grad=False, train=False)
  variables = {
    "params": state.params,
    **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
  }
  logits = jax.eval_shape(lambda v, x: plan.model.apply(v, x), variables, batch["image"])
  cotangent = jnp.asarray(rng.standard_normal(logits.shape), logits.dtype)
  passes = _passes(plan.model, variables, batch["image"], cotangent, False, state.tx)
  passes["train_step"] = (state_lib.train_step, (state, batch))
  params = flops.param_count(variables)
  opt = flops.optimizer_flops(config.optimizer.name, params, config.optimizer.get("momentum"))
  return Subject(config.model.name, found, flops.totals(found, params, opt), passes, plan)


def optimizer(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, Callable[[int], int]]:
  """The config's optimizer (sgd at 0.1 if it has none) and its FLOPs as a function of
  the parameter count."""
  if "optimizer" not in config:
    return optax.sgd(0.1), lambda n: flops.optimizer_flops("sgd", n)
  if "schedule" not in config:
    raise ConfigError(
      "schedule", "is missing: the optimizer needs a learning-rate schedule, e.g. name='constant'"
    )
  tx, _ = build_optimizer(config, 1, 1)
  name, momentum = config.optimizer.name, config.optimizer.get("momentum")
  return tx, lambda n: flops.optimizer_flops(name, n, momentum)
