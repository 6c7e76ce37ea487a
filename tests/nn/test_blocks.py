"""Blocks against independent references: full convs, closed-form parameter counts, exact
factorization."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from research.errors import ConfigError
from research.nn import activations, blocks, shapes


def init(module, x):
  return module.init(jax.random.PRNGKey(0), x)


def n_params(variables) -> int:
  return sum(p.size for p in jax.tree.leaves(variables["params"]))


def identity(x):
  return x


def test_conv_block_is_conv_plus_bias_then_activation():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 9, 3))
  block = blocks.ConvBlock(5, kernel_size=3, strides=2, padding="VALID", activation=nn.relu)
  v = init(block, x)
  v = jax.tree.map(lambda p: p + 0.1, v)  # Non-zero bias.
  k, b = (
    np.asarray(v["params"]["Conv_0"]["kernel"], np.float64),
    np.asarray(v["params"]["Conv_0"]["bias"]),
  )
  xs = np.asarray(x, np.float64)
  want = np.zeros((2, 4, 4, 5))
  for n in range(2):
    for o in range(5):
      full = sum(
        scipy.signal.correlate(xs[n, :, :, c], k[:, :, c, o], mode="valid") for c in range(3)
      )
      want[n, :, :, o] = full[::2, ::2] + b[o]
  np.testing.assert_allclose(block.apply(v, x), np.maximum(want, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial", [(12,), (10, 10), (6, 6, 6)])
def test_conv_block_works_in_1_2_and_3_dims(spatial):
  x = jnp.ones((2, *spatial, 3))
  y = blocks.ConvBlock(4, kernel_size=3, padding="VALID").apply(
    init(blocks.ConvBlock(4, padding="VALID"), x), x
  )
  assert y.shape == (2, *(s - 2 for s in spatial), 4)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_factorized_pair_equals_full_conv_with_outer_product_kernel(padding):
  """Column u (Kx1) then row v (1xK), linear in between, is one KxK conv with kernel u v^T."""
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 8, 1))
  u, v = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.7, -1.1])
  block = blocks.Factorized(1, kernel_size=3, padding=padding, activation=identity)
  params = {
    "Conv_0": {"kernel": u.reshape(3, 1, 1, 1), "bias": np.zeros(1)},
    "Conv_1": {"kernel": v.reshape(1, 3, 1, 1), "bias": np.zeros(1)},
  }
  full = blocks.ConvBlock(1, kernel_size=3, padding=padding, activation=identity)
  full_params = {"Conv_0": {"kernel": np.outer(u, v).reshape(3, 3, 1, 1), "bias": np.zeros(1)}}
  np.testing.assert_allclose(
    block.apply({"params": params}, x), full.apply({"params": full_params}, x), rtol=1e-5, atol=1e-5
  )


def test_factorized_multichannel_equals_full_conv_with_composed_kernel():
  """With channels, the pair is one KxK conv with W[i, j, c, o] = sum_m U[i, c, m] V[j, m, o]."""
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 7, 3))
  block = blocks.Factorized(4, kernel_size=3, mid_features=5, activation=identity, padding="SAME")
  v = init(block, x)
  u_k, v_k = v["params"]["Conv_0"]["kernel"], v["params"]["Conv_1"]["kernel"]
  w = jnp.einsum("icm,jmo->ijco", u_k[:, 0], v_k[0])
  full = blocks.ConvBlock(4, kernel_size=3, padding="SAME", activation=identity)
  full_params = {"Conv_0": {"kernel": w, "bias": v["params"]["Conv_1"]["bias"]}}
  np.testing.assert_allclose(
    block.apply(v, x), full.apply({"params": full_params}, x), rtol=1e-4, atol=1e-5
  )


def test_factorized_strides_and_shapes_match_the_full_conv():
  x = jnp.ones((1, 11, 9, 2))
  for padding in ("SAME", "VALID"):
    for strides in (1, 2, (2, 1)):
      f = blocks.Factorized(3, kernel_size=3, strides=strides, padding=padding)
      c = blocks.ConvBlock(3, kernel_size=3, strides=strides, padding=padding)
      assert f.apply(init(f, x), x).shape == c.apply(init(c, x), x).shape


K, CIN, CMID, COUT = 3, 16, 8, 24
PARAM_COUNTS = [  # (block, closed form)
  (blocks.ConvBlock(COUT, kernel_size=K), K * K * CIN * COUT + COUT),
  (blocks.ConvBlock(COUT, kernel_size=K, groups=4), K * K * (CIN // 4) * COUT + COUT),
  (
    blocks.Factorized(COUT, kernel_size=K, mid_features=CMID),
    K * CIN * CMID + CMID + K * CMID * COUT + COUT,
  ),
  (
    blocks.Factorized(COUT, kernel_size=K),
    K * CIN * CIN + CIN + K * CIN * COUT + COUT,
  ),  # mid = min(cin, cout)
  (blocks.Pointwise(COUT), CIN * COUT + COUT),
  (
    blocks.Bottleneck(COUT, kernel_size=K, mid_features=CMID),
    CIN * CMID + CMID + K * K * CMID * CMID + CMID + CMID * COUT + COUT,
  ),
  (
    blocks.Bottleneck(COUT, kernel_size=K, mid_features=CMID, inner=blocks.Factorized),
    CIN * CMID + CMID + 2 * (K * CMID * CMID + CMID) + CMID * COUT + COUT,
  ),
  (
    blocks.Bottleneck(
      COUT, kernel_size=K, mid_features=CMID, residual=True
    ),  # + 1x1 projection 16 -> 24
    CIN * CMID + CMID + K * K * CMID * CMID + CMID + CMID * COUT + COUT + CIN * COUT + COUT,
  ),
  (blocks.Separable(COUT, kernel_size=K), K * K * CIN + CIN + CIN * COUT + COUT),
  (
    blocks.Separable(COUT, kernel_size=K, depth_multiplier=2),
    K * K * 2 * CIN + 2 * CIN + 2 * CIN * COUT + COUT,
  ),
  (
    blocks.ConvBlock(COUT, kernel_size=K, norm=True),
    K * K * CIN * COUT + 2 * COUT,
  ),  # No bias; BN scale+shift.
]


@pytest.mark.parametrize(
  "block, want", PARAM_COUNTS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_parameter_count_equals_closed_form(block, want):
  assert n_params(jax.eval_shape(lambda: init(block, jnp.zeros((1, 10, 10, CIN))))) == want


def test_factorized_costs_six_ninths_of_full_at_equal_widths():
  x = jnp.zeros((1, 10, 10, 64))
  full = n_params(init(blocks.ConvBlock(64, kernel_size=3, activation=identity), x)) - 64
  pair = n_params(init(blocks.Factorized(64, kernel_size=3, activation=identity), x)) - 2 * 64
  assert pair / full == pytest.approx(6 / 9)


def test_pointwise_maps_100x100x256_to_100x100xn():
  for n in (1, 32, 64):
    out = jax.eval_shape(
      lambda n=n: blocks.Pointwise(n).init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((1, 100, 100, 256))
      )[0]
    )
    assert out.shape == (1, 100, 100, n)


def test_pointwise_is_a_matmul_over_channels():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 5, 6))
  block = blocks.Pointwise(3, activation=identity)
  v = init(block, x)
  w, b = v["params"]["Conv_0"]["kernel"][0, 0], v["params"]["Conv_0"]["bias"]
  np.testing.assert_allclose(
    block.apply(v, x), np.einsum("nhwc,co->nhwo", x, w) + b, rtol=1e-5, atol=1e-5
  )


def test_bottleneck_residual_adds_the_input():
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 6, 8))
  block = blocks.Bottleneck(8, kernel_size=3, residual=True, activation=identity)
  v = init(block, x)
  # Zero the expanding 1x1 conv: the branch is 0 and the block is the identity on x.
  v = {
    "params": {
      **v["params"],
      "Pointwise_1": jax.tree.map(jnp.zeros_like, v["params"]["Pointwise_1"]),
    }
  }
  np.testing.assert_allclose(block.apply(v, x), x, rtol=1e-6)
  no_res = blocks.Bottleneck(8, kernel_size=3, activation=identity)
  np.testing.assert_allclose(no_res.apply(v, x), 0.0, atol=1e-6)


def test_bottleneck_shapes_reduce_then_expand():
  x = jnp.zeros((1, 8, 8, 256))
  v = jax.eval_shape(lambda: init(blocks.Bottleneck(256, kernel_size=3, mid_features=64), x))[
    "params"
  ]
  assert v["Pointwise_0"]["Conv_0"]["kernel"].shape == (1, 1, 256, 64)
  assert v["ConvBlock_0"]["Conv_0"]["kernel"].shape == (3, 3, 64, 64)
  assert v["Pointwise_1"]["Conv_0"]["kernel"].shape == (1, 1, 64, 256)


def test_separable_equals_per_channel_correlation_then_pointwise():
  x = jax.random.normal(jax.random.PRNGKey(6), (1, 8, 8, 3))
  block = blocks.Separable(4, kernel_size=3, padding="VALID", activation=identity)
  v = init(block, x)
  dw, pw = np.asarray(v["params"]["Conv_0"]["kernel"]), np.asarray(v["params"]["Conv_1"]["kernel"])
  xs = np.asarray(x, np.float64)[0]
  depthwise = np.stack(
    [scipy.signal.correlate(xs[:, :, c], dw[:, :, 0, c], mode="valid") for c in range(3)], -1
  )
  want = depthwise @ pw[0, 0] + np.asarray(v["params"]["Conv_1"]["bias"])
  np.testing.assert_allclose(block.apply(v, x)[0], want, rtol=1e-4, atol=1e-5)


def test_norm_replaces_bias_with_batchnorm_statistics():
  x = jax.random.normal(jax.random.PRNGKey(8), (4, 6, 6, 3)) * 5 + 2
  block = blocks.ConvBlock(4, norm=True, activation=identity)
  v = init(block, x)
  assert "bias" not in v["params"]["Conv_0"] and "batch_stats" in v
  y, _ = block.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-4)  # Normalised over the batch.
  np.testing.assert_allclose(y.std((0, 1, 2)), 1.0, atol=1e-2)


@pytest.mark.parametrize(
  "make, field",
  [
    (lambda: blocks.ConvBlock(0), "features"),
    (lambda: blocks.ConvBlock(-3), "features"),
    (lambda: blocks.ConvBlock(4, kernel_size=11, padding="VALID"), "kernel_size"),
    (lambda: blocks.ConvBlock(4, groups=2), "groups"),  # 3 input channels.
    (lambda: blocks.Factorized(4, mid_features=0), "mid_features"),
    (lambda: blocks.Separable(4, depth_multiplier=0), "depth_multiplier"),
  ],
)
def test_impossible_block_raises_shape_error_naming_the_field(make, field):
  with pytest.raises(shapes.ShapeError) as e:
    jax.eval_shape(lambda: init(make(), jnp.zeros((1, 10, 10, 3))))
  assert e.value.field == field


def test_build_block_makes_the_names_of_a_spec_callables():
  """A config's spec names the block, its activations and a bottleneck's inner block: the same
  module as one built of the callables themselves."""
  spec = {"name": "bottleneck", "inner": "factorized", "activation": "identity", "reduction": 2}
  built = blocks.build_block(spec, 8, "cost.blocks[0]")
  want = blocks.Bottleneck(8, inner=blocks.Factorized, activation=activations.identity, reduction=2)
  assert built == want


@pytest.mark.parametrize(
  "spec, key",
  [
    ({"name": "conv", "kernal_size": 5}, "cost.blocks[0].kernal_size"),  # Misspelt: not dropped.
    ({"name": "pointwise", "kernel_size": 5}, "cost.blocks[0].kernel_size"),  # A 1x1 has none.
    ({"name": "fourier"}, "cost.blocks[0].name"),
    ({"name": "bottleneck", "inner": "3x3"}, "cost.blocks[0].inner"),
    ({"name": "conv", "activation": "swish"}, "cost.blocks[0].activation"),
  ],
)
def test_a_spec_with_an_unknown_name_or_field_is_a_config_error_naming_it(spec, key):
  with pytest.raises(ConfigError) as e:
    blocks.build_block(spec, 8, "cost.blocks[0]")
  assert e.value.key == key
