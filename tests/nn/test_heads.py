"""Heads against independent references: NumPy's pooling and matmul, shapes by hand."""

import jax
import numpy as np

from research.nn import heads


def test_gap_head_equals_global_average_pool_then_dense():
  x = jax.random.normal(jax.random.PRNGKey(7), (3, 4, 4, 8))
  head = heads.GAPHead(10)
  v = head.init(jax.random.PRNGKey(0), x)
  w, b = v["params"]["Conv_0"]["kernel"][0, 0], v["params"]["Conv_0"]["bias"]
  np.testing.assert_allclose(head.apply(v, x), x.mean((1, 2)) @ w + b, rtol=1e-5, atol=1e-5)


def test_dense_head_flattens_then_hidden_then_classes():
  x = jax.random.normal(jax.random.PRNGKey(8), (2, 3, 3, 4))
  head = heads.DenseHead(10, hidden=7)
  v = head.init(jax.random.PRNGKey(0), x)
  (w0, b0), (w1, b1) = [
    (v["params"][d]["kernel"], v["params"][d]["bias"]) for d in ("Dense_0", "Dense_1")
  ]
  assert w0.shape == (3 * 3 * 4, 7) and w1.shape == (7, 10)
  want = np.maximum(np.reshape(x, (2, -1)) @ w0 + b0, 0) @ w1 + b1
  np.testing.assert_allclose(head.apply(v, x), want, rtol=1e-5, atol=1e-5)
