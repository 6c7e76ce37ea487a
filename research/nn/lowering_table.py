"""The table of measured lowerings that `lowering.choose` keeps: one JSON file per user, keyed per
convolution, so that each shape is measured once.

The file is `{"format": 1, "entries": {KEY: ENTRY}}`, KEY from `table_key` (the platform, the
shapes of x and the kernel, strides, padding, dilation, groups and dtype of one convolution) and
ENTRY `{"choice": NAME, "seconds": {NAME: median seconds, ...}, "jax": version}`. Its path is
`default_table_path()`. A missing or unreadable file reads as empty (with a warning if
unreadable); `write_table` replaces it atomically, so a reader never sees half a table.
"""

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp

from research import paths
from research.errors import first_line
from research.nn import shapes

logger = logging.getLogger(__name__)

TABLE_ENV = "CONVLAB_LOWERING_TABLE"
TABLE_FORMAT = 1


def default_table_path() -> str:
  """`$CONVLAB_LOWERING_TABLE` if set, else `lowering.json` in `research.paths.cache_dir()`
  (`$XDG_CACHE_HOME/convlab`, `~/.cache/convlab` by default)."""
  return os.environ.get(TABLE_ENV) or os.path.join(paths.cache_dir(), "lowering.json")


def _ints(values: Sequence[int]) -> str:
  return ",".join(str(int(v)) for v in values)


@dataclasses.dataclass(frozen=True)
class Convolution:
  """One convolution as `lowering.choose` measures it and the table keys it: `platform` (jax's
  backend name), the shapes of x (`[batch, *spatial, c_in]`) and the kernel
  (`[*window, c_in / groups, c_out]`), strides, padding and dilation (an int or one per spatial
  axis), groups and the dtype."""

  platform: str
  x_shape: Sequence[int]
  kernel_shape: Sequence[int]
  strides: int | Sequence[int]
  padding: shapes.Padding
  dilation: int | Sequence[int]
  groups: int
  dtype: Any


def table_key(c: Convolution) -> str:
  """The table's key for one convolution, with ints broadcast per axis and padding upper-cased,
  e.g. `cpu|x=2,8,8,4|kernel=3,3,2,6|strides=1,1|padding=SAME|dilation=1,1|groups=2|dtype=float32`;
  explicit padding reads `padding=1:1,0:2` ((lo, hi) per axis)."""
  ndim = len(c.kernel_shape) - 2
  pad = shapes.explicit_padding(c.padding, ndim)
  pad_text = pad if isinstance(pad, str) else ",".join(f"{lo}:{hi}" for lo, hi in pad)
  return "|".join(
    [
      c.platform,
      f"x={_ints(c.x_shape)}",
      f"kernel={_ints(c.kernel_shape)}",
      f"strides={_ints(shapes.as_tuple(c.strides, ndim, 'strides'))}",
      f"padding={pad_text}",
      f"dilation={_ints(shapes.as_tuple(c.dilation, ndim, 'dilation'))}",
      f"groups={int(c.groups)}",
      f"dtype={jnp.dtype(c.dtype).name}",
    ]
  )


def load_table(path: str) -> dict[str, dict]:
  """The entries of the table at `path`; empty if it is missing, or (with a warning) unreadable or
  not a table."""
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
  except FileNotFoundError:
    logger.info("no lowering table at %s yet; starting an empty one", path)
    return {}
  except (OSError, ValueError) as e:
    logger.warning(
      "lowering table %s is unreadable (%s); starting an empty one", path, first_line(e)
    )
    return {}
  if not (
    isinstance(table, dict)
    and table.get("format") == TABLE_FORMAT
    and isinstance(table.get("entries"), dict)
  ):
    logger.warning(
      "lowering table %s is not a format-%d table; starting an empty one", path, TABLE_FORMAT
    )
    return {}
  return table["entries"]


def recorded(entries: dict[str, dict], key: str, path: str, names: Iterable[str]) -> str | None:
  """The choice recorded for `key`, or None if absent or (with a warning) not one of `names`."""
  entry = entries.get(key)
  if entry is None:
    return None
  if isinstance(entry, dict) and entry.get("choice") in names:
    return entry["choice"]
  logger.warning("lowering table %s has an invalid entry for %s: %r", path, key, entry)
  return None


def write_table(path: str, entries: dict[str, dict]) -> None:
  """Writes the table atomically: a temporary file in the same folder, then `os.replace`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lowering-", suffix=".json.tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"format": TABLE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
