"""Configs as data: load an experiment file, apply `--config.KEY=VALUE` overrides, validate, dump.

An experiment is a Python file under `experiments/` whose `get_config()` returns an
`ml_collections.ConfigDict`. Every check here runs before anything is compiled or written.
"""

import ast
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from research.errors import ConfigError, UserError


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the experiment file at `path`, locked so that unknown keys are refused.

  An experiment may build on another one as `from experiments import default`: the folder above the
  file's folder is put on `sys.path`. A file that cannot be loaded (not a `.py` file, a syntax
  error, a failing import, `get_config()` raising or returning something other than a
  `ConfigDict`) is a `UserError` naming the file and the cause, one line.
  """
  if os.path.isdir(path):
    raise UserError(f"config file {path!r} is a folder; pass an experiment file, experiments/*.py")
  if not os.path.isfile(path):
    raise UserError(f"config file {path!r} does not exist; experiments live in experiments/*.py")
  if not path.endswith(".py"):
    raise UserError(
      f"config file {path!r} cannot be loaded: it is not a Python file (.py); "
      "experiments live in experiments/*.py"
    )
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.append(root)
  # Anything the file's code raises, a UserError included, is reported as the file's fault;
  # KeyboardInterrupt (not an Exception) passes through.
  try:
    spec = importlib.util.spec_from_file_location(f"experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:
    raise UserError(f"config file {path!r} cannot be loaded: {_first_line(e)}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} has no get_config() function")
  try:
    config = module.get_config()
  except Exception as e:
    raise UserError(
      f"config file {path!r} cannot be loaded: get_config() raised {_first_line(e)}"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(
      f"config file {path!r} cannot be loaded: get_config() returned a value of type "
      f"{type(config).__name__}, not an ml_collections.ConfigDict"
    )
  config.lock()
  return config


def _first_line(e: BaseException) -> str:
  """`Type: the first line of its message` (at most 200 characters), for a one-line error."""
  lines = str(e).strip().splitlines()
  text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


# JAX computes in float32 and counts (steps, sizes, seeds) in int32 by default: a number beyond
# these overflows deep inside it, or turns into inf. Overrides and the checked keys must fit.
INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 3.4028234663852886e38  # float32's largest finite value, numpy.finfo(float32).max.


def _short(v: Any) -> str:
  """`repr(v)`, a long one cut to its start and its length (an int may have thousands of digits)."""
  text = repr(v)
  return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def out_of_range(value: Any) -> str | None:
  """Why `value` (or a number inside a tuple, list or dict of it) cannot be a config number, or
  None when it can: a float that is inf, nan or beyond float32's range, an int beyond
  +-`INT_LIMIT`."""
  if isinstance(value, (tuple, list)):
    value = list(value)
  elif isinstance(value, (dict, ml_collections.ConfigDict)):
    value = list(value.values())
  else:
    value = [value]
  for v in value:
    if isinstance(v, (tuple, list, dict, ml_collections.ConfigDict)):
      problem = out_of_range(v)
      if problem:
        return problem
    elif isinstance(v, float) and not math.isfinite(v):
      return f"{v!r} is not a finite number"
    elif isinstance(v, float) and abs(v) > FLOAT_LIMIT:
      return f"{v!r} is beyond float32's range (+-3.4e38)"
    elif is_int(v) and abs(v) > INT_LIMIT:
      return f"{_short(v)} is beyond +-(2**31 - 1), the range of JAX's int32"
  return None


def _parse(text: str) -> Any:
  """A command-line value as Python: numbers, tuples, booleans, None; anything else is a string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):  # The last two: nested too deep.
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Sets each `KEY=VALUE` (dotted key under `config`).

  `ml_collections.ConfigDict` refuses values of another type (it casts int to float and list to
  tuple); this turns its refusal into a `ConfigError` naming the key, and names the missing key or
  section of an unknown one. It also refuses a bool where a number belongs, which ConfigDict takes,
  and a number JAX cannot hold (`out_of_range`: inf, nan, beyond float32 or int32).
  """
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise UserError(f"override {item!r} is not of the form --config.KEY=VALUE")
    value = _parse(text)
    *path, leaf = key.split(".")
    parent = config
    for depth, part in enumerate(path):
      parent = parent.get(part) if isinstance(parent, ml_collections.ConfigDict) else None
      if not isinstance(parent, ml_collections.ConfigDict):
        raise ConfigError(".".join(path[: depth + 1]), "no such section in this config")
    if leaf not in parent:
      raise ConfigError(key, f"no such key; this section has: {', '.join(sorted(parent.keys()))}")
    current = parent[leaf]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(key, "is a section; set one of its keys instead")
    expected = parent.get_ref(leaf).get_type().__name__
    if isinstance(value, bool) and is_number(current):
      raise ConfigError(key, f"expects {expected}, got {value!r} (bool)")
    problem = out_of_range(value)
    if problem:
      raise ConfigError(key, problem)
    try:
      config.update_from_flattened_dict({key: value})
    except TypeError:
      raise ConfigError(
        key, f"expects {expected}, got {_short(value)} ({type(value).__name__})"
      ) from None


def is_int(v: Any) -> bool:
  """An int that is not a bool."""
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
  """An int or float that is not a bool."""
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
  return is_int(v) and v > 0


def _positive_number(v):
  """A number above 0 within float32's range (not inf or nan)."""
  return is_number(v) and v > 0 and out_of_range(v) is None


def _int_from(low: int) -> Callable[[Any], bool]:
  """An int from `low` to `INT_LIMIT`."""
  return lambda v: is_int(v) and low <= v <= INT_LIMIT


# (key, predicate, what a valid value is). Model fields are checked when the model is built.
CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
  ("seed", _int_from(0), "an integer from 0 to 2**31 - 1"),
  ("data.name", lambda v: isinstance(v, str) and v != "", "a TFDS dataset name"),
  ("data.batch_size", _int_from(1), "an integer from 1 to 2**31 - 1"),
  ("data.eval_batch_size", _int_from(1), "an integer from 1 to 2**31 - 1"),
  ("model.name", lambda v: isinstance(v, str), "a model name"),
  ("optimizer.name", lambda v: isinstance(v, str), "an optimizer name"),
  ("optimizer.learning_rate", _positive_number, "a positive finite number (float32)"),
  ("schedule.name", lambda v: isinstance(v, str), "a schedule name"),
  ("train.num_epochs", _int_from(1), "an integer from 1 to 2**31 - 1"),
  (
    "train.checkpoint_every_epochs",
    _int_from(0),
    "an integer from 0 (off) to 2**31 - 1",
  ),
  (
    "train.checkpoint_every_steps",
    _int_from(0),
    "an integer from 0 (off) to 2**31 - 1",
  ),
  ("train.keep_checkpoints", _int_from(1), "an integer from 1 to 2**31 - 1"),
  ("train.keep_best", _int_from(0), "an integer from 0 (keep no best) to 2**31 - 1"),
  (
    "train.best_metric",
    lambda v: v in ("test_accuracy", "test_loss", "train_accuracy", "train_loss"),
    "one of test_accuracy, test_loss, train_accuracy, train_loss",
  ),
  ("train.best_mode", lambda v: v in ("max", "min"), "'max' or 'min'"),
  ("train.log_grad_norms", lambda v: isinstance(v, bool), "True or False"),
  (
    "train.seeds_together",
    lambda v: v in ("auto", "unrolled", "vmap"),
    "'auto', 'unrolled' or 'vmap'",
  ),
]


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
  """(dotted key, value) of every value under the `ConfigDict` `node`, sections walked into."""
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config` at dotted `key`; a missing key is a `ConfigError` naming it."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(key, "is missing from this config")
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` for the first key whose value is impossible: a `CHECKS` key, or any number
  that is inf, nan or beyond float32's or int32's range."""
  for key, ok, what in CHECKS:
    value = get(config, key)
    if not ok(value):
      raise ConfigError(key, f"must be {what}, got {_short(value)}")
  for key, value in _leaves(config):  # inf, nan or beyond int32 anywhere, e.g. from the file.
    problem = out_of_range(value)
    if problem:
      raise ConfigError(key, f"must be within range: {problem}")


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as indented JSON (what `config.json` in a workdir holds)."""
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
