"""The PyTorch twin's training step (`measure.twin_model`), checked against the JAX train step and
timed for `run.py bench`. torch is optional: see `twin_model.available()`.

- `twin_step(module, optimizer_name, learning_rate, momentum)`: one PyTorch training step (forward,
  mean cross-entropy, backward, optimizer step) equal to `training.state.train_step` for sgd
  (with or without momentum, nesterov) and adam, at a constant learning rate.
- `numerics_check(config)`: one JAX step and one twin step from the same weights on the same random
  batch; their largest differences.
- `twin_pass(config)`: the twin's step on one random batch, ready to time (`run.py bench` times it
  taking turns with the JAX step); `bench_twin(config)` times it alone, by the project's one
  harness (`measure.timing`).

Optimizers: optax.sgd's trace `v = m v + g; p -= lr v` (nesterov: `p -= lr (g + m v)`) is
torch.optim.SGD's without dampening, and optax.adam's `lr m_hat / (sqrt(v_hat) + eps)` is
torch.optim.Adam's (eps outside the root, bias corrections alike).
"""

import copy
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from research import trees
from research.measure import subjects, twin_model
from research.measure.twin_model import Unsupported, torch_parts

OPTIMIZERS = ("sgd", "adam")


class TwinStep:
  """One PyTorch training step of a twin: forward in training mode, mean cross-entropy, backward,
  optimizer step. `step(image, label)`: `image` `[b, h, w, c]` float32 and `label` `[b]` int64
  tensors -> (the mean loss, a scalar, and the logits `[b, classes]`, both detached). Updates the
  module's parameters (and BatchNorm statistics) in place; `optimizer` is the torch optimizer."""

  def __init__(self, module: Any, optimizer: Any):
    self.module = module
    self.optimizer = optimizer

  def __call__(self, image: Any, label: Any) -> tuple[Any, Any]:
    F = torch_parts().F
    self.module.train()
    self.optimizer.zero_grad(set_to_none=True)
    logits = self.module(image)
    loss = F.cross_entropy(logits, label)
    loss.backward()
    self.optimizer.step()
    return loss.detach(), logits.detach()


def _refuse(options: dict, message: str) -> None:
  """`Unsupported` naming `optimizer.KEY` for the first of `options`, if any."""
  if options:
    raise Unsupported(f"optimizer.{sorted(options)[0]}", message)


def twin_step(
  module: Any,
  optimizer_name: str,
  learning_rate: float,
  momentum: float | None = None,
  **options: Any,
) -> TwinStep:
  """The training step of `module` with the torch optimizer equal to optax's `optimizer_name` at the
  constant `learning_rate`: sgd (`momentum`, `nesterov`) or adam (`b1`, `b2`, `eps`; `momentum`
  must be None). Other `options` (the rest of `config.optimizer`) raise `Unsupported` naming
  `optimizer.KEY`, as does another optimizer (`optimizer.name`)."""
  torch = torch_parts().torch
  params = list(module.parameters())
  if optimizer_name == "sgd":
    # Without momentum nesterov changes nothing in optax; torch refuses the pair.
    nesterov = bool(options.pop("nesterov", False)) and bool(momentum)
    _refuse(options, "the torch twin's sgd takes momentum and nesterov")
    optimizer = torch.optim.SGD(
      params, lr=learning_rate, momentum=momentum or 0.0, nesterov=nesterov
    )
  elif optimizer_name == "adam":
    if momentum is not None:
      raise Unsupported("optimizer.momentum", "adam takes no momentum (its b1 is one)")
    b1, b2, eps = options.pop("b1", 0.9), options.pop("b2", 0.999), options.pop("eps", 1e-8)
    if options.pop("eps_root", 0.0):
      raise Unsupported("optimizer.eps_root", "torch's Adam has no eps inside the root")
    _refuse(options, "the torch twin's adam takes b1, b2 and eps")
    optimizer = torch.optim.Adam(params, lr=learning_rate, betas=(b1, b2), eps=eps)
  else:
    raise Unsupported("optimizer.name", f"the torch twin has {OPTIMIZERS}, not {optimizer_name!r}")
  return TwinStep(module, optimizer)


def _setup(config: ml_collections.ConfigDict) -> tuple[Any, TwinStep, dict]:
  """(the JAX train state, the twin's step with the config's optimizer at its peak learning rate,
  its `module` holding the state's weights, one random batch as NumPy arrays), as
  `subjects.model_inputs` makes them for the JAX step."""
  _, state, batch, _ = subjects.model_inputs(config)
  module = twin_model.twin(config, {"params": state.params, "batch_stats": state.batch_stats})
  options = {k: v for k, v in config.optimizer.items() if k not in ("name", "learning_rate")}
  momentum = options.pop("momentum", None)
  name, rate = config.optimizer.name, config.optimizer.learning_rate
  return state, twin_step(module, name, rate, momentum, **options), batch


def _torch_batch(batch: dict) -> tuple[Any, Any]:
  torch = torch_parts().torch
  return torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"].astype(np.int64))


def _max_abs(a: Any, b: Any) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b))) if a.size else 0.0


def _compare(jax_tree: Any, torch_tree: Any, prefix: str) -> dict[str, tuple[float, float]]:
  """`{"prefix/path": (max |jax - torch|, max |jax|)}` over the leaves of `jax_tree`."""
  other = trees.flatten(torch_tree)
  return {
    "/".join((prefix,) + path): (
      _max_abs(leaf, other[path]),
      float(np.max(np.abs(np.asarray(leaf)), initial=0.0)),
    )
    for path, leaf in trees.leaves(jax_tree)
  }


def _summary(found: dict[str, tuple[float, float]], prefix: str) -> tuple[float, float]:
  """(the largest absolute difference over the leaves under `prefix`, and that over the largest
  magnitude of any of them: a relative error on the scale of the whole tree, since a leaf's own
  scale can be all cancellation, e.g. the gradient of a kernel that BatchNorm follows)."""
  mine = [v for k, v in found.items() if k.startswith(prefix + "/")]
  diff = max((d for d, _ in mine), default=0.0)
  scale = max((m for _, m in mine), default=0.0)
  return diff, diff / scale if scale else diff


def numerics_check(config: ml_collections.ConfigDict) -> dict:
  """One jitted JAX `train_step` and one twin step from the same initial weights on the same
  random batch (`config.data.batch_size`, the dataset's shape; as `run.py bench` makes it), at
  the constant learning rate `config.optimizer.learning_rate` (the config's schedule is replaced:
  at step 0 a warm-up's rate is 0, which would leave the parameters unchanged).

  Returns the largest absolute differences, JAX against torch, in float32:
  - `loss`: the step's mean cross-entropy; `logits`: the training-mode logits `[b, classes]`;
  - `grads`: the gradients of the parameters (whatever the optimizer);
  - `params` and `batch_stats`: the variables after the step;
  - `grads_relative`, `params_relative`: those over the largest magnitude in the tree;
  - `leaves`: `{"params/ConvBlock_0/Conv_0/kernel": difference, "grads/...": ...,
    "batch_stats/...": ...}`;
  and for scale `loss_value` (JAX's loss) and `update` (the largest change of a JAX parameter).

  Adam's first step moves each parameter by about `lr * g / (|g| + eps)`: where a gradient is
  near eps, float32 rounding in g (relative to the largest gradient) moves the result by up to
  `lr`. The gradients then agree and `params` does not; a larger `optimizer.eps` shows the rest of
  the update agreeing.

  Gradients that sum over batch x height x width terms carry float32 accumulation error that grows
  with that count, on either side (torch's BatchNorm backward, XLA's gradient of a conv with one
  input channel): `grads_relative` grows with the batch and the image (the README's speed section
  gives figures against a float64 twin).
  """
  if not twin_model.available():
    raise ImportError("numerics_check needs torch: pip install .[peer]")
  from research.training import state as state_lib

  config = copy.deepcopy(config)
  with config.unlocked():
    config.schedule = ml_collections.ConfigDict({"name": "constant"})
  state, step, batch = _setup(config)

  @jax.jit
  def forward_backward(state, batch):
    _, dropout = jax.random.split(state.rng)  # As `train_step` splits it.
    loss_of = functools.partial(state_lib.loss_fn, state=state, batch=batch, dropout=dropout)
    (_, (logits, _)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    return logits, grads

  logits, grads = forward_backward(state, batch)
  after, metrics = jax.jit(state_lib.train_step)(state, batch)
  loss, torch_logits = step(*_torch_batch(batch))
  torch_after = twin_model.variables_of(step.module)
  found = {
    **_compare(grads, twin_model.variables_of(step.module, grads=True)["params"], "grads"),
    **_compare(after.params, torch_after["params"], "params"),
    **_compare(after.batch_stats, torch_after["batch_stats"], "batch_stats"),
  }
  (grads_diff, grads_relative), (params_diff, params_relative) = (
    _summary(found, "grads"),
    _summary(found, "params"),
  )
  before = trees.flatten(state.params)
  return {
    "loss": abs(float(metrics["loss"]) - float(loss)),
    "logits": _max_abs(logits, torch_logits.numpy()),
    "grads": grads_diff,
    "grads_relative": grads_relative,
    "params": params_diff,
    "params_relative": params_relative,
    "batch_stats": _summary(found, "batch_stats")[0],
    "leaves": {name: diff for name, (diff, _) in found.items()},
    "loss_value": float(metrics["loss"]),
    "update": max(_max_abs(leaf, before[path]) for path, leaf in trees.leaves(after.params)),
  }


def twin_pass(config: ml_collections.ConfigDict) -> tuple[Callable[[], None], dict]:
  """(one twin training step at `config.data.batch_size` on one random batch of the dataset's
  shape, as `run.py bench` times the JAX step; `{"torch_version", "threads"}`). The step uses the
  config's optimizer at its peak learning rate (the rate does not change the time); torch's thread
  count is left at its default. An unsupported config raises `Unsupported` (a `ValueError`);
  torch must be installed (`twin_model.available()`)."""
  twin_model.check(config)
  torch = torch_parts().torch
  _, step, batch = _setup(config)
  image, label = _torch_batch(batch)

  def run() -> None:
    step(image, label)

  return run, {"torch_version": torch.__version__, "threads": torch.get_num_threads()}


def bench_twin(
  config: ml_collections.ConfigDict, warmup: int = 3, repeats: int = 10
) -> dict | None:
  """`twin_pass` timed alone, or None if torch is not installed.

  Timed by `measure.timing.measure` (`time.perf_counter`; `warmup` >= 1 untimed steps, then
  `repeats` >= 5 timed ones; torch on CPU is synchronous, so each time is the step's). Returns
  `torch_version`, `threads`, `seconds` (`min`, `median`, `max`, `n`, `warmup`) and
  `examples_per_second` (batch / median).
  """
  if not twin_model.available():
    return None
  from research.measure import timing

  run, about = twin_pass(config)
  seconds = timing.measure(run, warmup=warmup, repeats=repeats)
  return {
    **about,
    "seconds": seconds.to_dict(),
    "examples_per_second": config.data.batch_size / seconds.median,
  }
