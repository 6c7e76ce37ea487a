"""The cache table of measured lowerings: its key spells each convolution one way, its path."""

import jax.numpy as jnp

from research.nn import lowering_table

# platform, x shape, kernel shape, strides, padding, dilation, groups, dtype.
CONV = ("cpu", (2, 8, 8, 4), (3, 3, 2, 6), 1, "SAME", 1, 2, jnp.float32)


def _key(*convolution) -> str:
  return lowering_table.table_key(lowering_table.Convolution(*convolution))


def test_table_key_format():
  assert _key(*CONV) == (
    "cpu|x=2,8,8,4|kernel=3,3,2,6|strides=1,1|padding=SAME|dilation=1,1|groups=2|dtype=float32"
  )
  explicit = (*CONV[:3], (2, 1), ((1, 1), (0, 2)), (1, 2), *CONV[6:])
  assert "|strides=2,1|padding=1:1,0:2|dilation=1,2|" in _key(*explicit)
  # Spellings of the same convolution share a key.
  same = (*CONV[:3], (1, 1), "same", (1, 1), 2, "float32")
  assert _key(*same) == _key(*CONV)


def test_default_table_path(monkeypatch, tmp_path):
  monkeypatch.setenv(lowering_table.TABLE_ENV, "/some/table.json")
  assert lowering_table.default_table_path() == "/some/table.json"
  monkeypatch.delenv(lowering_table.TABLE_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert lowering_table.default_table_path() == str(tmp_path / "convlab" / "lowering.json")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert lowering_table.default_table_path() == str(
    tmp_path / ".cache" / "convlab" / "lowering.json"
  )
