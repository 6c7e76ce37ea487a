"""Where convlab keeps files of its own outside a workdir: the user's cache folder.

`cache_dir()` is `$XDG_CACHE_HOME/convlab`, with XDG's default `~/.cache` when the variable is
unset or empty. JAX's persistent compilation cache (`research.compilation`) and the measured
lowering table (`research.nn.lowering`) live under it.
"""

import os
from collections.abc import Mapping


def cache_dir(environ: Mapping[str, str] | None = None) -> str:
  """`$XDG_CACHE_HOME/convlab` (`~/.cache/convlab` by default), read from `environ`
  (`os.environ` when None)."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "convlab")
