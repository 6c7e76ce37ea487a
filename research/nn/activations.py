"""Activations by name. Each maps an array to an array of the same shape, elementwise.

| name       | f(x)                              | range          | f'(0) |
|------------|-----------------------------------|----------------|-------|
| sigmoid    | 1 / (1 + e^-x)                    | (0, 1)         | 1/4   |
| tanh       | (e^x - e^-x) / (e^x + e^-x)       | (-1, 1)        | 1     |
| relu       | max(0, x)                         | [0, inf)       | 0 (subgradient used by JAX) |
| leaky_relu | x if x >= 0 else a x (a = negative_slope) | (-inf, inf) | 1 (JAX's convention at 0) |
| elu        | x if x > 0 else e^x - 1           | (-1, inf)      | 1     |
| gelu       | x Phi(x) (tanh approximation, as flax) | about [-0.17, inf) | 1/2 |
| silu       | x sigmoid(x) (swish)              | about [-0.28, inf) | 1/2 |
| identity   | x                                 | (-inf, inf)    | 1     |

leaky_relu's a = `negative_slope` is 0.01 by default.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from research.registry import lookup

Activation = Callable[[jnp.ndarray], jnp.ndarray]  # Elementwise: an array to one of the same shape.


def identity(x: jnp.ndarray) -> jnp.ndarray:
  """`x` unchanged: no activation (a stack of convolutions then is one linear map)."""
  return x


ACTIVATIONS: dict[str, Activation] = {
  "sigmoid": nn.sigmoid,
  "tanh": jnp.tanh,
  "relu": nn.relu,
  "leaky_relu": nn.leaky_relu,
  "elu": nn.elu,
  "gelu": nn.gelu,
  "silu": nn.silu,
  "identity": identity,
}


def get(name: str, key: str = "model.activation", negative_slope: float = 0.01) -> Activation:
  """The activation called `name`; `negative_slope` sets leaky_relu's slope below zero. `key` names
  the config field for the error an unknown name raises."""
  fn = lookup(ACTIVATIONS, name, key, "activation")
  if name == "leaky_relu":
    return functools.partial(nn.leaky_relu, negative_slope=negative_slope)
  return fn
