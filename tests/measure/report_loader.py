"""`load(cls, data)`: a report's JSON form back into its dataclasses (`research.measure.reports`),
refusing what `dataclasses.asdict` of a `cls` could not have written: a missing or unknown field,
a value of another type. The tests' check that the printed JSON has the documented structure.

Types it reads: dataclasses, `list[T]`, `tuple[T, ...]`, `dict[str, T]`, unions (`T | None`: the
first member that loads), `int`, `float` (an int is a float, as JSON writes 2.0 as 2), `str`,
`bool` (never an int, nor an int a bool) and bare `dict`. A field the class computes itself
(`init=False`) must be present and equal to what the class computes.
"""

import dataclasses
import types
import typing
from typing import Any


class Mismatch(ValueError):
  """The data does not fit the type; the message names the path (`tables[0].rows[1].params`)."""


def load(cls: Any, data: Any, path: str = "report") -> Any:
  """`data` (as `json.loads` gives it) as an instance of `cls`; `Mismatch` naming the first path
  that does not fit."""
  origin, args = typing.get_origin(cls), typing.get_args(cls)
  if origin in (typing.Union, types.UnionType):
    for member in args:
      try:
        return load(member, data, path)
      except Mismatch:
        continue
    raise Mismatch(f"{path}: {data!r:.80} is none of {cls}")
  if cls is type(None):
    if data is not None:
      raise Mismatch(f"{path}: expected null, got {data!r:.80}")
    return None
  if dataclasses.is_dataclass(cls):
    return _load_dataclass(cls, data, path)
  if origin in (list, tuple):
    _expect(data, list, path)
    return origin(load(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
  if origin is dict or cls is dict:
    _expect(data, dict, path)
    if not args:
      return data
    return {key: load(args[1], value, f"{path}.{key}") for key, value in data.items()}
  if cls is float:
    _expect(data, (int, float), path)
    return float(data)
  _expect(data, cls, path)
  return data


def _expect(data: Any, kind: type | tuple[type, ...], path: str) -> None:
  if isinstance(data, bool) != (kind is bool) or not isinstance(data, kind):
    raise Mismatch(f"{path}: expected {kind}, got {data!r:.80}")


def _load_dataclass(cls: Any, data: Any, path: str) -> Any:
  _expect(data, dict, path)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  missing, unknown = sorted(set(fields) - set(data)), sorted(set(data) - set(fields))
  if missing or unknown:
    raise Mismatch(f"{path}: missing fields {missing}, unknown fields {unknown}")
  hints = typing.get_type_hints(cls)
  values = {name: load(hints[name], data[name], f"{path}.{name}") for name in fields}
  made = cls(**{name: value for name, value in values.items() if fields[name].init})
  for name, field in fields.items():
    if not field.init and getattr(made, name) != values[name]:
      raise Mismatch(
        f"{path}.{name}: {values[name]!r} where the class computes {getattr(made, name)!r}"
      )
  return made
