"""The pure steps: what `eval_step` sums, and that a run compiles each step once."""

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from research.nn import models
from research.training import evaluate, train
from research.training import state as state_lib


class EvalStepTest(parameterized.TestCase):
  """`eval_step` with and without jit: the same sums, and padding (mask 0) counts for nothing."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_sums_over_the_real_examples_only(self):
    model = models.build_model(
      ml_collections.ConfigDict({"name": "cnn", "widths": (4,)}), 10, (8, 8, 1)
    )
    tx = optax.sgd(0.1)
    state = state_lib.create_train_state(model, tx, 0, (8, 8, 1))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 6).astype(np.int32)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)  # The last two are padding.
    sums = self.variant(state_lib.eval_step)(
      state, {"image": images, "label": labels, "mask": mask}
    )
    logits = np.asarray(model.apply({"params": state.params}, images[:4]), np.float64)
    log_z = np.log(np.exp(logits).sum(-1))
    chex.assert_trees_all_close(
      {k: float(v) for k, v in sums.items()},
      {
        "loss": float(np.sum(log_z - logits[np.arange(4), labels[:4]])),
        "correct": float(np.sum(np.argmax(logits, -1) == labels[:4])),
        "count": 4.0,
      },
      rtol=1e-5,
    )


def test_a_run_compiles_its_train_and_eval_steps_once(make_config, tmp_path, monkeypatch):
  """Two epochs, a padded last test batch (360 = 2 x 128 + 104), saves between: one trace of each
  step."""
  monkeypatch.setattr(  # The loop's step, called by `state_lib.parallel_steps`.
    state_lib, "indexed_train_step", chex.assert_max_traces(state_lib.indexed_train_step, n=1)
  )
  monkeypatch.setattr(evaluate, "eval_step", chex.assert_max_traces(state_lib.eval_step, n=1))
  train.train_and_evaluate(make_config("train.num_epochs=2", "model.widths=(8,)"), str(tmp_path))
  jax.clear_caches()


def test_the_loop_step_gathers_on_the_device_exactly_the_host_batches(make_config):
  """`indexed_train_step` (the loop's) over an epoch's indices equals `train_step` over
  `batches.train_batches` (the host's definition), bit for bit, step after step."""
  from research.data import batches, splits
  from research.training.plan import make_plan

  config = make_config("model.widths=(8,)")
  plan = make_plan(config)
  train_split, _ = splits.load(config)
  stats = splits.normalizer(train_split, plan.dataset.pixel_max)
  on_device = {"image": splits.normalize(train_split.images, stats), "label": train_split.labels}
  order = batches.epoch_indices(
    config.seed, 1, len(train_split), steps_per_epoch=plan.steps_per_epoch, batch_size=32
  )
  host = batches.train_batches(train_split, stats, 32, config.seed, 1)
  spe = plan.steps_per_epoch
  # Start at step spe + 3: row 3 of epoch 1's indices, as a resumed run would.
  state = plan.initial_state(0).replace(step=spe + 3)
  reference = state
  indexed, bare = jax.jit(state_lib.indexed_train_step), jax.jit(state_lib.train_step)
  for i, batch in enumerate(host):
    if i < 3:
      continue
    state, m = indexed(state, on_device, order)
    reference, r = bare(reference, batch)
    chex.assert_trees_all_equal((state.params, m), (reference.params, r))
    if i == 6:
      break


def test_layer_paths_follow_the_forward_pass_and_grad_norms_are_each_layers():
  """A plain stack of 11 blocks: the layers in call order (ConvBlock_10 last, not after
  ConvBlock_1 as names sort), and each norm that of the layer's own gradient, by NumPy."""
  model = models.build_model(
    ml_collections.ConfigDict({"name": "plain", "widths": (2,) * 11, "pool_every": 20,
                               "hidden": 4}), 10, (4, 4, 1))  # fmt: skip
  state = state_lib.create_train_state(model, optax.sgd(0.1), 0, (4, 4, 1))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  paths = state_lib.layer_paths(model, variables, (3, 4, 4, 1))
  want = [(f"ConvBlock_{i}", "Conv_0") for i in range(11)]
  assert paths == want + [("DenseHead_0", "Dense_0"), ("DenseHead_0", "Dense_1")]
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((3, 4, 4, 1)).astype(np.float32),
           "label": np.array([1, 2, 3], np.int32)}  # fmt: skip
  norms = state_lib.grad_norms(state, batch, paths)
  grads = jax.grad(lambda p: state_lib.loss_fn(p, state, batch, state.rng)[0])(state.params)
  for path in paths:
    layer = grads[path[0]][path[1]]
    flat = np.concatenate([np.ravel(layer["kernel"]), np.ravel(layer["bias"])])
    assert float(norms["/".join(path)]) == pytest.approx(np.linalg.norm(flat), rel=1e-5)
