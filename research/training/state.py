"""The train state and the pure steps: `train_step(state, batch) -> (state, metrics)`, `eval_step`.

Batches are dicts: `image` float32 `[batch, height, width, channels]`, `label` int32 `[batch]` and,
for evaluation, `mask` float32 `[batch]` (1 for a real example, 0 for padding). The steps are jitted
by their callers (the training loop, evaluation, `run.py bench`), with the shardings the plan gives.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from flax), BatchNorm statistics and the RNG key.

  `batch_stats` is `{}` without BatchNorm; `rng` is a raw `uint32[2]` key that each step's
  randomness (dropout) is split from.
  """

  batch_stats: Any
  rng: jax.Array


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, seed: int, input_shape: tuple[int, ...]
) -> TrainState:
  """The initial state, a function of `seed` only: parameters from `PRNGKey(seed)`,
  the step key folded off it."""

  def init(key):
    variables = model.init(key, jnp.zeros((1,) + tuple(input_shape)), train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
      rng=jax.random.fold_in(key, 1),
    )

  # One compilation, not one per optimizer-state leaf.
  return jax.jit(init)(jax.random.PRNGKey(seed))


def all_finite(tree: Any) -> bool:
  """Whether every floating-point value in `tree` is finite; checked before each save.

  Outside `train_step`, which stays the bare step that `run.py bench` measures. Arrays on CPU
  already are host memory, so NumPy checks them in well under a millisecond (a compiled check costs
  a compilation per process); on accelerators a compiled reduction spares copying the state to the
  host.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if all(device.platform == "cpu" for x in leaves for device in x.devices()):
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
  return bool(_all_finite_on_device(leaves))


@jax.jit
def _all_finite_on_device(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def loss_fn(
  params: Any, state: TrainState, batch: dict, dropout: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, dict]]:
  """(mean cross-entropy of `batch` under `params`, (logits `[b, classes]`, BatchNorm updates)),
  in training mode with the dropout key `dropout`; `state` gives the model and its statistics."""
  logits, updates = state.apply_fn(
    {"params": params, "batch_stats": state.batch_stats},
    batch["image"],
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": dropout},
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, (logits, updates)


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` (`image` `[b, h, w, c]`, `label` `[b]`);
  returns the mean loss and accuracy."""
  rng, dropout = jax.random.split(state.rng)
  loss_of = functools.partial(loss_fn, state=state, batch=batch, dropout=dropout)
  (loss, (logits, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  state = state.apply_gradients(
    grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats), rng=rng
  )
  return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def indexed_train_step(state: TrainState, data: dict, order: jax.Array) -> tuple[TrainState, dict]:
  """`train_step` on the batch that the state's step selects: row `state.step % steps_per_epoch`
  of `order` (int32 `[steps_per_epoch, batch]`, `data.epoch_indices`), gathered on the device from
  `data`: `image` float32 `[n, h, w, c]`, the split already normalized (`data.normalize`), and
  `label` int32 `[n]`. The batches are those of `data.train_batches`, bit for bit.

  The training loop's step: with the split and the epoch's order on the device, it sends nothing
  per step but the call itself. (Normalizing on the device instead would differ from NumPy's in
  the last bit, and change every number a run gives.)
  """
  idx = order[state.step % order.shape[0]]
  return train_step(state, {"image": data["image"][idx], "label": data["label"][idx]})


def parallel_steps(states: list[TrainState], split: dict, orders: list) -> list:
  """`indexed_train_step` for several seeds' states, each on its own epoch order, in one compiled
  call: `[(state, metrics)]` in order.

  The steps are written out one after another (unrolled): each seed gets the numbers of its own
  run, bit for bit (`tests/training/test_seeds.py`). On CPU this is cheaper than as many separate
  calls, and cheaper than `vmapped_steps`, whose convolutions become grouped ones: `run.py bench
  --seeds=N` measures both, and the README's Speed section has the figures. The training loop's
  formulation on CPU (`seeds_formulation`).
  """
  return [indexed_train_step(state, split, order) for state, order in zip(states, orders)]


def vmapped_steps(states: list[TrainState], split: dict, orders: list) -> list:
  """`parallel_steps` as one step vmapped over the seeds' stacked states and orders (the split is
  shared): the formulation for backends that run batched (grouped) convolutions well. The
  numbers equal each seed's own run to float tolerance, not bit for bit."""
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  out, step_metrics = jax.vmap(indexed_train_step, in_axes=(0, None, 0))(
    stacked, split, jnp.stack(orders)
  )
  return [
    (jax.tree.map(lambda x, i=i: x[i], out), jax.tree.map(lambda x, i=i: x[i], step_metrics))
    for i in range(len(states))
  ]


# How `train.seeds_together=auto` steps several seeds, by backend: measured on CPU (`run.py bench
# --seeds=N` reports both); elsewhere vmap, untested here (no GPU or TPU was at hand).
SEEDS_TOGETHER = {"cpu": "unrolled", "gpu": "vmap", "tpu": "vmap"}


def seeds_formulation(setting: str, platform: str) -> str:
  """`unrolled` or `vmap`: `setting` (`config.train.seeds_together`) unless it is `auto`, then
  `SEEDS_TOGETHER` for the devices' `platform` (unrolled for one it does not list)."""
  if setting != "auto":
    return setting
  return SEEDS_TOGETHER.get(platform, "unrolled")


def layer_paths(model: nn.Module, variables: dict, image_shape) -> list[tuple[str, ...]]:
  """The paths (in `variables["params"]`) of the model's layers that hold parameters directly (each
  convolution, dense layer and BatchNorm), in the order the forward pass calls them: input to
  output. Traced on shapes only (`jax.eval_shape`); `image_shape` is `[batch, *spatial, c]`."""
  called = []

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.scope.path)
    if context.method_name == "__call__" and path not in called:
      called.append(path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(image_shape), train=True, mutable=["batch_stats"]),
      variables,
    )

  def owns_params(path):
    node = _at(variables["params"], path)
    return isinstance(node, dict) and any(not isinstance(v, dict) for v in node.values())

  return [path for path in called if path and owns_params(path)]


def _at(tree: dict, path: tuple[str, ...]) -> Any:
  """The node of the nested dict `tree` at `path`, None where there is none."""
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def grad_norms(state: TrainState, batch: dict, paths: list[tuple[str, ...]]) -> dict:
  """`{"a/b": norm}`: the L2 norm of the loss gradient with respect to each layer's parameters
  (`layer_paths`), on `batch` in training mode, the state unchanged; keyed by the layer's path
  joined with `/`."""
  grads = jax.grad(lambda p: loss_fn(p, state, batch, state.rng)[0])(state.params)
  norms = {}
  for path in paths:
    leaves = [v for v in _at(grads, path).values() if not isinstance(v, dict)]
    norms["/".join(path)] = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))
  return norms


def eval_step(state: TrainState, batch: dict) -> dict:
  """Sums over the real (`mask` = 1) examples of `batch`: `loss`, `correct` and `count`."""
  logits = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
  )
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = jnp.argmax(logits, -1) == batch["label"]
  mask = batch["mask"]
  return {
    "loss": jnp.sum(losses * mask),
    "correct": jnp.sum(correct * mask),
    "count": jnp.sum(mask),
  }
