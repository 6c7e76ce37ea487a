"""Activations by name: values, derivatives and ranges against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import ConfigError
from research.nn import activations

POINTS = np.array([-3.0, -1.0, -0.25, 0.0, 0.5, 2.0, 4.0], np.float32)
CLOSED_FORMS = {  # name: (f, f')
  "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
  "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
  "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
  "leaky_relu": (lambda x: np.where(x >= 0, x, 0.01 * x), lambda x: np.where(x >= 0, 1.0, 0.01)),
  "elu": (lambda x: np.where(x > 0, x, np.expm1(x)), lambda x: np.where(x > 0, 1.0, np.exp(x))),
  "silu": (
    lambda x: x / (1 + np.exp(-x)),
    lambda x: 1 / (1 + np.exp(-x)) * (1 + x * (1 - 1 / (1 + np.exp(-x)))),
  ),
  "identity": (lambda x: x, lambda x: np.ones_like(x)),
}


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_values_and_derivatives_match_closed_forms(name):
  fn, grad = activations.get(name), jax.vmap(jax.grad(activations.get(name)))
  f, df = CLOSED_FORMS[name]
  np.testing.assert_allclose(fn(POINTS), f(POINTS.astype(np.float64)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad(POINTS), df(POINTS.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_is_the_tanh_approximation_with_slope_one_half_at_zero():
  np.testing.assert_allclose(
    activations.get("gelu")(POINTS), gelu_tanh(POINTS.astype(np.float64)), rtol=1e-5, atol=1e-6
  )
  assert float(jax.grad(activations.get("gelu"))(0.0)) == pytest.approx(0.5)


def test_textbook_points():
  assert float(jax.grad(activations.get("sigmoid"))(0.0)) == 0.25
  assert float(activations.get("sigmoid")(0.0)) == 0.5
  assert float(jax.grad(activations.get("tanh"))(0.0)) == 1.0
  assert float(jax.grad(activations.get("relu"))(-1.0)) == 0.0
  assert float(jax.grad(activations.get("leaky_relu", negative_slope=0.2))(-5.0)) == pytest.approx(
    0.2
  )
  assert float(activations.get("leaky_relu", negative_slope=0.2)(-5.0)) == pytest.approx(-1.0)


@pytest.mark.parametrize(
  "name, low, high, low_attained, span",
  # The module docstring's ranges; `span`: |x| up to which float32 does not yet round onto an
  # open bound.
  [
    ("sigmoid", 0.0, 1.0, False, 15.0),
    ("tanh", -1.0, 1.0, False, 7.0),
    ("relu", 0.0, np.inf, True, 30.0),
    ("elu", -1.0, np.inf, False, 15.0),
    ("silu", -0.27846, np.inf, True, 30.0),  # Minimum at x = -1.2785.
    ("gelu", -0.17004, np.inf, True, 30.0),  # Minimum at x = -0.7517.
  ],
)
def test_documented_ranges_hold(name, low, high, low_attained, span):
  x = np.linspace(-span, span, 200001)
  y = np.asarray(activations.get(name)(jnp.asarray(x, jnp.float32)), np.float64)
  if low_attained:  # A closed lower bound: reached, never passed.
    assert y.min() == pytest.approx(low, abs=1e-4) and (y >= low - 1e-4).all()
  else:  # An open one: never reached.
    assert (y > low).all()
  if np.isfinite(high):  # Every finite upper bound here is open.
    assert (y < high).all()
  else:  # Unbounded above: grows like x.
    assert y.max() == pytest.approx(span, rel=1e-3)


def test_leaky_relu_is_unbounded_below():
  assert float(activations.get("leaky_relu")(-1e6)) == pytest.approx(-1e4)


def test_unknown_name_names_the_key_and_the_choices():
  with pytest.raises(ConfigError) as e:
    activations.get("swish")
  assert e.value.key == "model.activation" and "silu" in str(e.value)
