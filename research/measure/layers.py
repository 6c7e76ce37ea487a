"""Each counted layer of a model timed alone, pass by pass: forward, input gradient, weight
gradient (`run.py bench`), so that the slow layer, and the slow pass, are visible.

A layer is its own module (`measure.flops.counted`) on a random input of the shape it sees in the
model, with random parameters. Each pass is jitted on its own: the input gradient is the
vector-Jacobian product with respect to the input only, the weight gradient with respect to the
parameters only (XLA drops the forward from both: a convolution's and a dense layer's gradients do
not need its output). Times come from the one harness, interleaved per layer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.measure import flops, reports, timing


def layer_times(
  model: nn.Module, input_shape: tuple[int, ...], warmup: int, repeats: int, **kwargs
) -> list[reports.LayerTimes]:
  """For each counted layer of `model` on inputs of `input_shape` (batch included): its path,
  kind, window, input and output shapes, forward FLOPs and the seconds of each pass (forward,
  input gradient, weight gradient). The first layer's input gradient is timed too (a model never
  needs it)."""
  rng = np.random.default_rng(0)
  x_model = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  found = []
  for layer, module in flops.counted(model, x_model, **kwargs):
    x = jnp.asarray(rng.standard_normal(layer.input_shape), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal(layer.output_shape), jnp.float32)
    params = module.init(jax.random.PRNGKey(0), x)

    def forward(p, x, module=module):
      return module.apply(p, x)

    def input_grad(p, x, ct, forward=forward):
      return jax.vjp(lambda x: forward(p, x), x)[1](ct)[0]

    def weight_grad(p, x, ct, forward=forward):
      return jax.vjp(lambda p: forward(p, x), p)[1](ct)[0]

    times = timing.measure_interleaved(
      {
        "forward": (jax.jit(forward), (params, x)),
        "input_grad": (jax.jit(input_grad), (params, x, cotangent)),
        "weight_grad": (jax.jit(weight_grad), (params, x, cotangent)),
      },
      warmup=warmup,
      repeats=repeats,
    )
    found.append(
      reports.LayerTimes(
        path=layer.path,
        kind=layer.kind,
        window=list(layer.window),
        input_shape=list(layer.input_shape),
        output_shape=list(layer.output_shape),
        forward_flops=layer.forward_flops,
        seconds=reports.LayerPassTimes(**times),
      )
    )
  return found
