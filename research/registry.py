"""Lookup by name in the project's registries.

A registry is a plain dict from name to object (`nn.blocks.BLOCKS`, `nn.activations.ACTIVATIONS`,
`nn.models.MODELS`, `training.optim.OPTIMIZERS`, ...): adding an entry is a function or class plus
one line. `lookup` is the one place an unknown name becomes an error a user can read.
"""

from collections.abc import Mapping
from typing import TypeVar

from research.errors import ConfigError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, key: str, kind: str) -> T:
  """`registry[name]`; an unknown name is a `ConfigError` naming `key` (the config key that chose
  it) and listing the `kind`s (e.g. "block") there are."""
  if not isinstance(name, str) or name not in registry:
    raise ConfigError(key, f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(registry))}")
  return registry[name]
