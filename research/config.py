"""Configs as data: load an experiment file, apply `--config.KEY=VALUE` overrides, validate, dump.

An experiment is a Python file under `experiments/` whose `get_config()` returns an
`ml_collections.ConfigDict`. Every check here runs before anything is compiled or written.
"""

import ast
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from research.errors import ConfigError, UserError


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the experiment file at `path`, locked so that unknown keys are refused.

  An experiment may build on another one as `from experiments import default`: the folder above the
  file's folder is put on `sys.path`.
  """
  if not os.path.isfile(path):
    raise UserError(f"config file {path!r} does not exist; experiments live in experiments/*.py")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.append(root)
  spec = importlib.util.spec_from_file_location(f"experiment_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} has no get_config() function")
  config = module.get_config()
  config.lock()
  return config


def _parse(text: str) -> Any:
  """A command-line value as Python: numbers, tuples, booleans, None; anything else is a string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Sets each `KEY=VALUE` (dotted key under `config`).

  `ml_collections.ConfigDict` refuses values of another type (it casts int to float and list to
  tuple); this turns its refusal into a `ConfigError` naming the key, and names the missing key or
  section of an unknown one. It also refuses a bool where a number belongs, which ConfigDict takes.
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
    try:
      config.update_from_flattened_dict({key: value})
    except TypeError:
      raise ConfigError(
        key, f"expects {expected}, got {value!r} ({type(value).__name__})"
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
  return is_number(v) and v > 0


# (key, predicate, what a valid value is). Model fields are checked when the model is built.
CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
  ("seed", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
  ("data.name", lambda v: isinstance(v, str) and v != "", "a TFDS dataset name"),
  ("data.batch_size", positive_int, "a positive integer"),
  ("data.eval_batch_size", positive_int, "a positive integer"),
  ("model.name", lambda v: isinstance(v, str), "a model name"),
  ("optimizer.name", lambda v: isinstance(v, str), "an optimizer name"),
  ("optimizer.learning_rate", _positive_number, "a positive number"),
  ("schedule.name", lambda v: isinstance(v, str), "a schedule name"),
  ("train.num_epochs", positive_int, "a positive integer"),
  (
    "train.checkpoint_every_epochs",
    lambda v: is_int(v) and v >= 0,
    "a non-negative integer (0: off)",
  ),
  (
    "train.checkpoint_every_steps",
    lambda v: is_int(v) and v >= 0,
    "a non-negative integer (0: off)",
  ),
  ("train.keep_checkpoints", positive_int, "a positive integer"),
  ("train.keep_best", lambda v: is_int(v) and v >= 0, "a non-negative integer (0: keep no best)"),
  (
    "train.best_metric",
    lambda v: v in ("test_accuracy", "test_loss", "train_accuracy", "train_loss"),
    "one of test_accuracy, test_loss, train_accuracy, train_loss",
  ),
  ("train.best_mode", lambda v: v in ("max", "min"), "'max' or 'min'"),
]


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config` at dotted `key`; a missing key is a `ConfigError` naming it."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(key, "is missing from this config")
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` for the first key whose value is impossible."""
  for key, ok, what in CHECKS:
    value = get(config, key)
    if not ok(value):
      raise ConfigError(key, f"must be {what}, got {value!r}")


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as indented JSON (what `config.json` in a workdir holds)."""
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
