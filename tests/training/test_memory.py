"""The memory estimate: parameters by hand, the whole against XLA's own analysis of the compiled
step, and a model too large for memory refused in one line before anything is written."""

import os

import jax
import jax.numpy as jnp
import pytest

from research.errors import ConfigError
from research.training import memory
from research.training.plan import make_plan
from research.training.state import train_step

from support import load, run_cli

# The default CNN on 8x8x1, by hand: conv 3x3 1->32, conv 3x3 32->64 (each + bias), two 2x2 pools
# to 2x2x64 = 256, dense 256->256, dense 256->10.
DEFAULT_PARAMS = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (256 * 256 + 256) + (256 * 10 + 10)


def test_parameters_and_adam_state_are_counted_from_shapes(tmp_path):
  plan = make_plan(load(f"data.data_dir={tmp_path}"), static=True)
  estimate = memory.estimate(plan, 32)
  assert estimate.params == estimate.gradients == 4 * DEFAULT_PARAMS  # float32.
  # Adam keeps two moments per parameter, plus its step counts (a few bytes).
  assert 3 * estimate.params <= estimate.state <= 3 * estimate.params + 64


def _xla_bytes(plan, batch_size: int) -> int:
  """What XLA allocates for the compiled, state-donating train step: arguments, outputs and
  temporaries, less the donated buffers that outputs reuse."""
  state = jax.eval_shape(lambda: plan.initial_state(0))
  batch = {
    "image": jax.ShapeDtypeStruct((batch_size, *plan.dataset.shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
  }
  compiled = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile()
  m = compiled.memory_analysis()
  return (
    m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  )


@pytest.mark.parametrize(
  "path, overrides",
  [
    ("experiments/fashion_mnist.py", ()),  # BatchNorm, 28x28, batch 128.
    ("experiments/fashion_mnist.py", ("model.block=factorized", "model.widths=(64,128)")),
    ("experiments/resnet.py", ()),
  ],
)
def test_the_estimate_is_within_a_factor_of_two_of_what_xla_allocates(tmp_path, path, overrides):
  config = load(f"data.data_dir={tmp_path}", *overrides, path=path)
  plan = make_plan(config, static=True)
  estimate = memory.estimate(plan, config.data.batch_size).total
  xla = _xla_bytes(plan, config.data.batch_size)
  assert 0.5 <= estimate / xla <= 2, (estimate, xla)
  # And it grows with the batch as the activations do: twice the batch, nearly twice the memory.
  doubled = memory.estimate(plan, 2 * config.data.batch_size).total
  assert 1.5 <= doubled / estimate <= 2


def test_more_than_is_available_is_a_config_error_naming_the_model_keys(tmp_path, monkeypatch):
  plan = make_plan(load(f"data.data_dir={tmp_path}"), static=True)
  need = memory.estimate(plan, 32).total
  monkeypatch.setattr(memory, "available", lambda devices: (need - 1, "host memory available"))
  with pytest.raises(ConfigError) as e:
    memory.check(plan, 32)
  assert e.value.key == "model"
  assert "(model.widths, model.hidden) or lower data.batch_size" in str(e.value)
  monkeypatch.setattr(memory, "available", lambda devices: (need, "host memory available"))
  assert memory.check(plan, 32).total == need  # Exactly enough is enough.


def test_cpu_devices_share_the_host_memory(monkeypatch):
  monkeypatch.setattr(memory, "_host_available", lambda: 8 * 2**30)
  cpu = jax.devices("cpu")[0]
  assert memory.available((cpu,)) == (8 * 2**30, "host memory available")
  have, where = memory.available((cpu,) * 8)
  assert have == 2**30 and where.endswith("shared by 8 CPU devices")


def test_a_model_far_too_large_is_refused_in_one_line_before_anything_is_written(tmp_path):
  # Before: RESOURCE_EXHAUSTED after minutes of compiling, or about 10 s a step with no output.
  workdir = tmp_path / "run"
  result = run_cli(
    "train",
    "--config=experiments/fashion_mnist.py",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.model.widths=(4096,8192)",
    "--config.model.hidden=65536",
    f"--workdir={workdir}",
    timeout=120,
  )
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
    "error: config.model: training this model at batch 128 needs about "
  )
  assert "(model.widths, model.hidden) or lower data.batch_size" in lines[0]
  assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "data")
