"""JAX's persistent compilation cache for `run.py`: compiled XLA programs are kept on disk, so a
second process running the same programs loads them instead of compiling them again.

jax (0.10.2) builds its cache object once, at the first compilation after
`jax_compilation_cache_dir` is set, and then ignores later changes of that option; `enable_cache`
therefore runs before anything is compiled, and resets jax's cache when it changes the directory.
"""

import logging
import os
import tempfile
from collections.abc import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache

from research import paths

ENV = "CONVLAB_COMPILE_CACHE"
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
OFF = ("off", "")

logger = logging.getLogger(__name__)


def default_directory(environ: Mapping[str, str]) -> str:
  """`jax` under convlab's cache folder (`research.paths.cache_dir`): `$XDG_CACHE_HOME/convlab/jax`,
  `~/.cache/convlab/jax` by default."""
  return os.path.join(paths.cache_dir(environ), "jax")


def resolve(directory: str | None, environ: Mapping[str, str]) -> str | None:
  """The cache directory (absolute): `directory` if given, else `$CONVLAB_COMPILE_CACHE` if set,
  else `default_directory`; None when the one chosen is "off" or ""."""
  if directory is None:
    directory = environ.get(ENV)
  if directory is None:
    return default_directory(environ)
  if directory.strip().lower() in OFF:
    return None
  return os.path.abspath(os.path.expanduser(directory))


def unusable(directory: str) -> str | None:
  """Creates `directory` if needed; None if a file can be written in it, else why not."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None


def enable_cache(directory: str | None = None) -> str | None:
  """Turns on jax's persistent compilation cache in `directory` (see `resolve`) for every program
  this process compiles from now on, however short its compilation (0 s) or small its entry (0
  bytes). Returns the directory in use, or None when the cache is off.

  A directory that cannot be created or written is one warning, and the run goes on without the
  cache. A `$JAX_COMPILATION_CACHE_DIR` set by the user wins: it is returned and nothing is changed.
  """
  if os.environ.get(JAX_ENV):
    return os.environ[JAX_ENV]
  directory = resolve(directory, os.environ)
  if directory is None:
    return None
  problem = unusable(directory)
  if problem is not None:
    logger.warning("compilation cache off: cannot write to %s (%s)", directory, problem)
    return None
  if jax.config.values["jax_compilation_cache_dir"] != directory:
    compilation_cache.reset_cache()  # A cache jax built for another directory would be kept.
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
