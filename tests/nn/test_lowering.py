"""The convolution's lowerings against `lax.conv_general_dilated` called directly (forward and
both gradients), and the "auto" choice through its cache table (`test_lowering_table.py`: the
table's key and path)."""

import functools
import itertools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research.nn import conv, lowering, lowering_table, shapes

jax.config.update("jax_enable_x64", False)

NAMES = ("native", "shifted", "im2col")
WINDOWS = {1: [(1,), (3,)], 2: [(1, 1), (3, 3), (3, 1), (1, 3)], 3: [(1, 1, 1), (3, 3, 3)]}
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 5)}  # A 3-tap kernel dilated by 2 (5 pixels) fits VALID.
PADDINGS = ["SAME", "VALID", 1, "asymmetric"]
ASYMMETRIC = ((0, 2), (1, 0), (2, 1))
GROUPS = [1, 2, "depthwise"]
STRIDE_DILATION = [(1, 1), (2, 1), (1, 2), (2, 2)]
C_IN, C_OUT = 4, 8


# Multiplication in GF(4) (elements 0, 1, x, x + 1 as 0..3; addition is XOR).
_GF4_MUL = [[0, 0, 0, 0], [0, 1, 2, 3], [0, 2, 3, 1], [0, 3, 1, 2]]


def _grid():
  """Per dimension, the 16 rows (a, b) of an orthogonal array over GF(4): columns a, b, a + b and
  a + 2b take every pair of values together once, so every padding meets every groups,
  (stride, dilation) and window, and so on for every pair of them (columns with fewer values
  fold theirs modulo the count, which keeps every pair)."""
  cases = []
  for ndim, windows in WINDOWS.items():
    for a, b in itertools.product(range(4), range(4)):
      padding = PADDINGS[a]
      groups = GROUPS[b % len(GROUPS)]
      stride, dilation = STRIDE_DILATION[a ^ b]
      window = windows[(a ^ _GF4_MUL[2][b]) % len(windows)]
      groups = C_IN if groups == "depthwise" else groups
      padding = ASYMMETRIC[:ndim] if padding == "asymmetric" else padding
      cases.append((SPATIAL[ndim], window, stride, padding, dilation, groups))
  return cases


CASES = _grid()


def _case_id(case):
  spatial, window, stride, padding, dilation, groups = case
  pad = padding if isinstance(padding, str | int) else "asym"
  w = "x".join(map(str, window))
  return f"{len(spatial)}d-k{w}-s{stride}-d{dilation}-{pad}-g{groups}"


def _lax_padding(padding, ndim):
  return ((padding, padding),) * ndim if isinstance(padding, int) else padding


def _inputs(index):
  spatial, window, _, _, _, groups = CASES[index]
  rng = np.random.default_rng(index)
  x = rng.normal(size=(2, *spatial, C_IN)).astype(np.float32)
  k = rng.normal(size=(*window, C_IN // groups, C_OUT)).astype(np.float32)
  return x, k


def _value_and_vjp(f, x, k, seed):
  """(y, dL/dx, dL/dk) for L = <cotangent, f(x, k)> with a random cotangent, jitted."""
  shape = jax.eval_shape(f, x, k).shape
  cotangent = np.random.default_rng(seed).normal(size=shape).astype(np.float32)

  @jax.jit
  def run(x, k, cotangent):  # (jax.random inside would take seconds to compile.)
    y, pullback = jax.vjp(f, x, k)
    return (y, *pullback(cotangent))

  return [np.asarray(a) for a in run(x, k, cotangent)]


@functools.cache
def _reference(index):
  """The independent reference: `lax.conv_general_dilated`, its own dimension numbers."""
  case = CASES[index]
  spatial, _, stride, padding, dilation, groups = case
  ndim = len(spatial)
  sp = "DHW"[-ndim:]

  def f(x, k):
    return lax.conv_general_dilated(
      x,
      k,
      window_strides=(stride,) * ndim,
      padding=_lax_padding(padding, ndim),
      rhs_dilation=(dilation,) * ndim,
      dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
      feature_group_count=groups,
    )

  return _value_and_vjp(f, *_inputs(index), seed=index)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_lowering_equals_lax_forward_and_gradients(name, index):
  spatial, window, stride, padding, dilation, groups = CASES[index]
  fn = functools.partial(
    lowering.LOWERINGS[name], strides=stride, padding=padding, dilation=dilation, groups=groups
  )
  got = _value_and_vjp(fn, *_inputs(index), seed=index)
  want = _reference(index)
  assert got[0].shape[1:-1] == shapes.conv_output_shape(spatial, window, stride, padding, dilation)
  for what, g, w in zip(("y", "dx", "dkernel"), got, want):
    assert g.shape == w.shape, what
    # Sums of up to a few hundred float32 products of unit normals: rounding differs by order.
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4, err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_lowerings_accumulate_bfloat16_like_lax(name):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.bfloat16)
  got = lowering.LOWERINGS[name](x, k, padding="SAME")
  want = lax.conv_general_dilated(
    x.astype(jnp.float32),
    k.astype(jnp.float32),
    (1, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  assert got.dtype == jnp.bfloat16
  # Accumulated in float32, each output is the float32 sum rounded once: within a bfloat16 ulp
  # (2^-8 to 2^-7 relative); accumulating 36 products in bfloat16 would be off by several.
  want = np.asarray(want.astype(jnp.bfloat16), np.float32)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_conv_routes_to_the_named_lowering(name, monkeypatch):
  calls = []

  def spy(x, kernel, **kwargs):
    calls.append(kwargs)
    return lowering.native(x, kernel, **kwargs)

  monkeypatch.setitem(lowering.LOWERINGS, name, spy)
  x, k = np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 1, 2), np.float32)
  conv.conv(x, k, strides=2, padding="SAME", dilation=1, groups=2, lowering=name)
  assert calls == [dict(strides=2, padding="SAME", dilation=1, groups=2)]


@pytest.mark.parametrize("name", [*NAMES, "auto"])
def test_every_lowering_keeps_the_argument_checks(name, table):
  with pytest.raises(shapes.ShapeError, match="does not fit"):
    conv.conv(np.zeros((1, 4, 4, 1), np.float32), np.zeros((5, 5, 1, 1), np.float32), lowering=name)
  with pytest.raises(shapes.ShapeError) as e:
    conv.conv(
      np.zeros((1, 4, 4, 4), np.float32),
      np.zeros((1, 1, 1, 6), np.float32),
      groups=4,
      lowering=name,
    )
  assert e.value.field == "groups"


def test_unknown_lowering_names_the_valid_ones():
  with pytest.raises(ValueError, match="native, shifted, im2col, auto; got 'nope'"):
    conv.conv(
      np.zeros((1, 4, 4, 1), np.float32), np.zeros((3, 3, 1, 1), np.float32), lowering="nope"
    )


# The "auto" choice and its table.

SHAPE = dict(
  platform="cpu",
  x_shape=(2, 8, 8, 4),
  kernel_shape=(3, 3, 2, 6),
  strides=1,
  padding="SAME",
  dilation=1,
  groups=2,
  dtype=jnp.float32,
)
CONV = lowering_table.Convolution(**SHAPE)
TIMINGS = {"native": 3e-3, "shifted": 1e-3, "im2col": 2e-3}


@pytest.fixture
def table(tmp_path, monkeypatch):
  """The table's path, under tmp_path and named by CONVLAB_LOWERING_TABLE."""
  path = tmp_path / "cache" / "lowering.json"
  monkeypatch.setenv(lowering_table.TABLE_ENV, str(path))
  return path


class FakeTimer:
  """A `timer` for `lowering.choose` that returns TIMINGS; `calls` lists its calls' arguments."""

  def __init__(self):
    self.calls = []

  def __call__(self, *args, **kwargs):
    self.calls.append(args)
    return dict(TIMINGS)


def _forbidden_timer(*args, **kwargs):
  raise AssertionError("a recorded key must not be measured")


def _write(path, entries):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"format": 1, "entries": entries}))


def test_auto_takes_the_recorded_choice_without_measuring(table, monkeypatch):
  _write(table, {lowering_table.table_key(CONV): {"choice": "im2col", "seconds": {}}})
  assert lowering.choose(CONV, timer=_forbidden_timer) == "im2col"
  assert lowering.choose(CONV, table_path=str(table), timer=_forbidden_timer) == "im2col"
  # And conv(lowering="auto") runs it, unmeasured: a measurement would trace the spy too.
  calls = []

  def spy(x, kernel, **kwargs):
    calls.append(x.shape)
    return lowering.im2col(x, kernel, **kwargs)

  monkeypatch.setitem(lowering.LOWERINGS, "im2col", spy)
  x, k = np.ones(SHAPE["x_shape"], np.float32), np.ones(SHAPE["kernel_shape"], np.float32)
  conv.conv(x, k, padding="SAME", groups=2, lowering="auto")
  assert calls == [SHAPE["x_shape"]]


def test_a_missing_key_is_measured_once_and_recorded(table):
  _write(table, {"other|key": {"choice": "native", "seconds": {}}})
  timer = FakeTimer()
  assert lowering.choose(CONV, timer=timer) == "shifted"
  assert timer.calls == [(CONV,)]
  written = json.loads(table.read_text())
  assert written["format"] == 1
  assert written["entries"]["other|key"]["choice"] == "native"  # Kept.
  entry = written["entries"][lowering_table.table_key(CONV)]
  assert entry["choice"] == "shifted" and entry["seconds"] == TIMINGS
  assert lowering.choose(CONV, timer=timer) == "shifted"
  assert len(timer.calls) == 1  # Read, not measured again.
  assert [p.name for p in table.parent.iterdir()] == ["lowering.json"]  # No temporary left.


@pytest.mark.parametrize(
  "content", ["{not json", "[1, 2]", '{"format": 99, "entries": {}}', "\xff\xfe"]
)
def test_a_corrupt_table_is_tolerated_and_recreated(table, caplog, content):
  table.parent.mkdir(parents=True)
  table.write_bytes(content.encode("latin-1"))
  with caplog.at_level(logging.WARNING, logger=lowering_table.__name__):
    assert lowering.choose(CONV, timer=FakeTimer()) == "shifted"
  assert any(r.levelno == logging.WARNING and str(table) in r.getMessage() for r in caplog.records)
  written = json.loads(table.read_text())
  assert written["entries"][lowering_table.table_key(CONV)]["choice"] == "shifted"


def test_an_invalid_entry_is_measured_again(table, caplog):
  _write(table, {lowering_table.table_key(CONV): {"choice": "nope"}})
  timer = FakeTimer()
  with caplog.at_level(logging.WARNING, logger=lowering_table.__name__):
    assert lowering.choose(CONV, timer=timer) == "shifted"
  assert len(timer.calls) == 1 and "invalid entry" in caplog.text


def test_a_choice_recorded_while_measuring_wins(table):
  def measure_while_another_process_records(*args, **kwargs):
    _write(table, {lowering_table.table_key(CONV): {"choice": "native", "seconds": {}}})
    return dict(TIMINGS)

  assert lowering.choose(CONV, timer=measure_while_another_process_records) == "native"
  assert (
    json.loads(table.read_text())["entries"][lowering_table.table_key(CONV)]["choice"] == "native"
  )


def test_an_unwritable_table_still_gives_a_choice(tmp_path, caplog):
  (tmp_path / "table").mkdir()  # A folder where the table should be.
  with caplog.at_level(logging.WARNING, logger=lowering.__name__):
    path = str(tmp_path / "table")
    assert lowering.choose(CONV, table_path=path, timer=FakeTimer()) == "shifted"
  assert "cannot write" in caplog.text
  assert [p.name for p in tmp_path.iterdir()] == ["table"]  # No temporary left.


def test_measure_times_each_lowering_by_the_one_harness():
  seconds = lowering.measure(CONV)
  assert set(seconds) == set(NAMES) and all(s > 0 for s in seconds.values())


def test_auto_inside_jit_measures_once_and_equals_native(table, caplog):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  k = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)

  def loss(x, k, name):
    return jnp.sum(conv.conv(x, k, strides=2, padding=1, groups=2, lowering=name) ** 2)

  def measured():  # `choose` logs one line per measurement.
    return [r for r in caplog.records if r.getMessage().startswith("lowering for ")]

  with caplog.at_level(logging.INFO, logger=lowering.__name__):
    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(x, k, "auto")
    assert len(measured()) == 1  # At trace time; the forward and the gradient share the key.
    # A fresh trace of the same shape reads the table.
    jax.jit(lambda x, k: conv.conv(x, k, strides=2, padding=1, groups=2, lowering="auto"))(x, k)
    assert len(measured()) == 1
  want = jax.value_and_grad(loss, argnums=(0, 1))(x, k, "native")
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
  (entry,) = json.loads(table.read_text())["entries"].values()
  assert set(entry["seconds"]) == set(NAMES) and all(s > 0 for s in entry["seconds"].values())
  assert entry["choice"] == min(entry["seconds"], key=entry["seconds"].get)
