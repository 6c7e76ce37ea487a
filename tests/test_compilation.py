"""JAX's persistent compilation cache (research/compilation.py, `run.py --compile_cache`): where it
goes, that a second process loads what the first compiled with the same numbers, and that a cache
turned off or unusable costs nothing but the cache."""

import os
import re

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from research import compilation

from support import run_cli

OPTIONS = (
  "jax_compilation_cache_dir",
  "jax_persistent_cache_min_compile_time_secs",
  "jax_persistent_cache_min_entry_size_bytes",
)
# jax/_src/compiler.py, log_persistent_cache_hit; an entry is the file `<key>-cache`.
HIT = re.compile(r"Persistent compilation cache hit for '[^']*' with key '([^']*)'")


@pytest.fixture
def environ(monkeypatch):
  """No cache setting of the caller's leaks in; jax's cache options and cache object are restored
  afterwards, so later tests in this process compile without a persistent cache as before."""
  for name in (compilation.ENV, compilation.JAX_ENV, "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  saved = {name: jax.config.values[name] for name in OPTIONS}
  yield monkeypatch
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def train(workdir, data_dir, *args: str, env: dict | None = None):
  """`run.py train` of the default experiment for one epoch; hits are logged as warnings (stderr)
  by `JAX_LOG_COMPILES`."""
  return run_cli(
    "train",
    "--config.train.num_epochs=1",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *args,
    env={"JAX_LOG_COMPILES": "1", **(env or {})},
  )


def test_the_directory_is_the_argument_then_the_env_then_the_xdg_cache(tmp_path, environ):
  environ.setenv("HOME", str(tmp_path / "home"))
  assert compilation.resolve(None, os.environ) == str(tmp_path / "home/.cache/convlab/jax")
  environ.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation.resolve(None, os.environ) == str(tmp_path / "xdg/convlab/jax")
  environ.setenv(compilation.ENV, str(tmp_path / "env"))
  assert compilation.resolve(None, os.environ) == str(tmp_path / "env")
  assert compilation.resolve(str(tmp_path / "arg"), os.environ) == str(tmp_path / "arg")
  assert compilation.resolve("off", os.environ) is None
  environ.setenv(compilation.ENV, "off")
  assert compilation.resolve(None, os.environ) is None
  environ.setenv(compilation.ENV, "")
  assert compilation.resolve(None, os.environ) is None


def test_enable_cache_sets_jax_options_and_the_next_compilation_is_written(tmp_path, environ):
  environ.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  directory = str(tmp_path / "xdg/convlab/jax")
  assert compilation.enable_cache() == directory
  assert [jax.config.values[name] for name in OPTIONS] == [directory, 0, 0]
  jax.jit(lambda x: x * 3 + 7)(jnp.arange(5.0)).block_until_ready()
  assert os.listdir(directory)
  other = str(tmp_path / "other")  # A new directory takes effect though jax built its cache.
  assert compilation.enable_cache(other) == other
  jax.jit(lambda x: x * 5 - 2)(jnp.arange(6.0)).block_until_ready()
  assert os.listdir(other)


def test_off_or_a_users_jax_compilation_cache_dir_leave_jax_alone(tmp_path, environ):
  before = [jax.config.values[name] for name in OPTIONS]
  assert compilation.enable_cache("off") is None
  environ.setenv(compilation.ENV, "off")
  assert compilation.enable_cache() is None
  environ.setenv(compilation.JAX_ENV, str(tmp_path / "theirs"))
  assert compilation.enable_cache(str(tmp_path / "mine")) == str(tmp_path / "theirs")
  assert [jax.config.values[name] for name in OPTIONS] == before
  assert not (tmp_path / "mine").exists()


def test_an_unusable_directory_is_one_warning_and_no_cache(tmp_path, environ, caplog):
  before = [jax.config.values[name] for name in OPTIONS]
  (tmp_path / "file").write_text("")
  assert compilation.enable_cache(str(tmp_path / "file/cache")) is None
  assert [r.getMessage() for r in caplog.records if r.name == compilation.__name__] == [
    f"compilation cache off: cannot write to {tmp_path / 'file/cache'} (Not a directory)"
  ]
  assert [jax.config.values[name] for name in OPTIONS] == before


def test_a_second_run_loads_every_program_from_the_cache_with_the_same_metrics(
  tmp_path, data_dir, environ
):
  cache = tmp_path / "cache"
  first = train(tmp_path / "w1", data_dir, f"--compile_cache={cache}")
  assert first.returncode == 0, first.stderr[-2000:]
  written = set(os.listdir(cache))
  assert any(name.startswith("jit_parallel_steps-") for name in written), (
    written
  )  # The loop's step.
  assert not HIT.findall(first.stderr)

  second = train(tmp_path / "w2", data_dir, f"--compile_cache={cache}")
  assert second.returncode == 0, second.stderr[-2000:]
  assert {f"{key}-cache" for key in HIT.findall(second.stderr)} == written  # Every one loaded,
  assert set(os.listdir(cache)) == written  # and nothing compiled anew.
  metrics = [(tmp_path / w / "metrics.jsonl").read_bytes() for w in ("w1", "w2")]
  assert metrics[0] and metrics[0] == metrics[1]


def test_compile_cache_off_writes_no_cache(tmp_path, data_dir, environ):
  xdg = tmp_path / "xdg"
  result = train(tmp_path / "w", data_dir, "--compile_cache=off", env={"XDG_CACHE_HOME": str(xdg)})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Persistent compilation cache" not in result.stderr
  assert not xdg.exists()


def test_an_unwritable_cache_dir_is_one_warning_line_and_the_run_succeeds(
  tmp_path, data_dir, environ
):
  (tmp_path / "file").write_text("")
  cache = tmp_path / "file" / "cache"
  result = train(tmp_path / "w", data_dir, f"--compile_cache={cache}")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if "compilation cache" in line.lower()]
  assert lines == [f"compilation cache off: cannot write to {cache} (Not a directory)"]
  assert (tmp_path / "w" / "metrics.jsonl").read_text()
