"""The pure steps: what `eval_step` sums, and that a run compiles each step once."""

import chex
import jax
import ml_collections
import numpy as np
import optax
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
  monkeypatch.setattr(train, "train_step", chex.assert_max_traces(state_lib.train_step, n=1))
  monkeypatch.setattr(evaluate, "eval_step", chex.assert_max_traces(state_lib.eval_step, n=1))
  train.train_and_evaluate(make_config("train.num_epochs=2", "model.widths=(8,)"), str(tmp_path))
  jax.clear_caches()
