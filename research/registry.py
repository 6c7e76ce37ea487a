"""A registry by name: adding a block, model, optimizer or dataset is a function plus one entry."""

from typing import Callable, TypeVar

from research.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
  """Maps a name to an object; `lookup` turns an unknown name into a `ConfigError`."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@REG.register("relu")` stores the decorated object under `name`."""

    def add(obj: T) -> T:
      if name in self:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self[name] = obj
      return obj

    return add

  def lookup(self, name: str, key: str):
    """The object under `name`; `key` is the config key that chose it (for the error)."""
    if name not in self:
      raise ConfigError(key, f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
    return self[name]
