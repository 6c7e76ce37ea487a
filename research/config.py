"""Configs as data: load an experiment file, apply `--config.KEY=VALUE` overrides, validate, dump.

An experiment is a Python file under `experiments/` whose `get_config()` returns an
`ml_collections.ConfigDict`; it may build on another one (`from experiments import default`).
`ml_collections.config_flags` parses each override by the type of the value it replaces: an int key
takes `64`, a float key `3e-3`, a bool key `true` or `False`, a tuple key `(16,32)`, a str key its
text. This module adds what config_flags leaves out: one-line errors naming the key or the file,
numbers JAX cannot hold refused, and one small validator per config section. Every check here runs
before anything is compiled or written.

The file itself is loaded here, not by `config_flags.DEFINE_config_file`: its loader (ml_collections
1.1) executes every file into one module, `config_config`, so a file without `get_config()` returns
the previously loaded file's config; it defers a missing file as an object that fails on first use,
and quotes a `get_config()` raising TypeError or ValueError as a whole traceback.
"""

import ast
import copy
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from research import trees
from research.errors import ConfigError, UserError, first_line


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
    raise UserError(f"config file {path!r} cannot be loaded: {first_line(e)}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} has no get_config() function")
  try:
    config = module.get_config()
  except Exception as e:
    raise UserError(
      f"config file {path!r} cannot be loaded: get_config() raised {first_line(e)}"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(
      f"config file {path!r} cannot be loaded: get_config() returned a value of type "
      f"{type(config).__name__}, not an ml_collections.ConfigDict"
    )
  config.lock()
  return config


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


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Sets each `KEY=VALUE` (a dotted key under `config`), parsed as config_flags parses
  `--config.KEY=VALUE`. Two forms config_flags lacks are kept: `KEY=None` sets None (config_flags
  would set a str key to the text 'None' and refuse it for a number), and a str key also takes a
  quoted Python string (`name='adam'`), as overrides written inside a config (an ablation's
  variants) quote them.

  All or nothing: `config` changes only if every override is valid. A `ConfigError` names the key
  that is unknown (or the missing section), a section given a value, a value config_flags cannot
  parse as the key's type (a bool where a number belongs included), or a number JAX cannot hold
  (`out_of_range`: inf, nan, beyond float32 or int32).
  """
  scratch, values = copy.deepcopy(config), {}  # Later overrides see the earlier ones.
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise UserError(f"override {item!r} is not of the form --config.KEY=VALUE")
    values[key] = _parse(scratch, key, text)
    problem = out_of_range(values[key])
    if problem:
      raise ConfigError(key, problem)
  config.update_from_flattened_dict(values)


def _parse(config: ml_collections.ConfigDict, key: str, text: str) -> Any:
  """Sets `--config.KEY=TEXT` in `config` by config_flags, on a `FlagValues` of its own (not absl's
  global one, which `run.py`'s argparse commands do not use), and returns the value it parsed."""
  section, leaf = _section_of(config, key)
  if text == "None":
    section[leaf] = None
    return None
  expected = section.get_type(leaf)
  if expected is type(None):  # config_flags parses by the type, and None has none.
    raise ConfigError(
      key, "is None in this config, with no type to parse a value by; the experiment can declare "
      "it as config_dict.placeholder(TYPE)"
    )  # fmt: skip
  if expected is str:
    text = _unquoted(text)
  argv = ["run.py", f"--config.{key}={text}"]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
  except Exception:  # Its parsers raise ValueError, SyntaxError, RecursionError (nested too deep).
    raise ConfigError(key, f"expects {expected.__name__}, got {_short(text)}") from None
  return flag_values["config"].override_values[key]


def _section_of(
  config: ml_collections.ConfigDict, key: str
) -> tuple[ml_collections.ConfigDict, str]:
  """The section holding dotted `key`, and the key's last part. A `ConfigError` names the first
  missing section, or the key with the keys its section has, or a section given a value."""
  *path, leaf = key.split(".")
  section = config
  for depth, part in enumerate(path):
    section = section.get(part) if isinstance(section, ml_collections.ConfigDict) else None
    if not isinstance(section, ml_collections.ConfigDict):
      raise ConfigError(".".join(path[: depth + 1]), "no such section in this config")
  if leaf not in section:
    raise ConfigError(key, f"no such key; this section has: {', '.join(sorted(section.keys()))}")
  if isinstance(section[leaf], ml_collections.ConfigDict):
    raise ConfigError(key, "is a section; set one of its keys instead")
  return section, leaf


def _unquoted(text: str) -> str:
  """The content of a quoted Python string (`'adam'` -> `adam`), else `text` as it is."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):  # The last two: nested too deep.
    return text
  return value if isinstance(value, str) else text


def is_int(v: Any) -> bool:
  """An int that is not a bool."""
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
  """An int or float that is not a bool."""
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
  return is_int(v) and v > 0


def _positive_number(v: Any) -> bool:
  """A number above 0 within float32's range (not inf or nan)."""
  return is_number(v) and v > 0 and out_of_range(v) is None


def _int_from(low: int) -> Callable[[Any], bool]:
  """An int from `low` to `INT_LIMIT`."""
  return lambda v: is_int(v) and low <= v <= INT_LIMIT


def _name(v: Any) -> bool:
  return isinstance(v, str) and v != ""


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config` at dotted `key`; a missing key is a `ConfigError` naming it."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(key, "is missing from this config")
    node = node[part]
  return node


def _require(config: ml_collections.ConfigDict, key: str, ok: Callable[[Any], bool], what: str):
  """A `ConfigError` naming `key` unless `ok(value)`; `what` says what a valid value is."""
  value = get(config, key)
  if not ok(value):
    raise ConfigError(key, f"must be {what}, got {_short(value)}")


FROM_0, FROM_1 = "an integer from 0 to 2**31 - 1", "an integer from 1 to 2**31 - 1"


def check_seed(config: ml_collections.ConfigDict) -> None:
  """`seed`: the run's one source of randomness (initialization, data order)."""
  _require(config, "seed", _int_from(0), FROM_0)


def check_data(config: ml_collections.ConfigDict) -> None:
  """`data`: a dataset name and the train and test batch sizes (examples)."""
  _require(config, "data.name", _name, "a TFDS dataset name")
  _require(config, "data.batch_size", _int_from(1), FROM_1)
  _require(config, "data.eval_batch_size", _int_from(1), FROM_1)


def check_model(config: ml_collections.ConfigDict) -> None:
  """`model`: its name; its other fields are checked when the model is built (research/nn)."""
  _require(config, "model.name", lambda v: isinstance(v, str), "a model name")


def check_optimizer(config: ml_collections.ConfigDict) -> None:
  """`optimizer`: its name and peak learning rate; research/training/optim.py checks the rest."""
  _require(config, "optimizer.name", lambda v: isinstance(v, str), "an optimizer name")
  _require(
    config, "optimizer.learning_rate", _positive_number, "a positive finite number (float32)"
  )


def check_schedule(config: ml_collections.ConfigDict) -> None:
  """`schedule`: its name; research/training/optim.py checks its fields."""
  _require(config, "schedule.name", lambda v: isinstance(v, str), "a schedule name")


def check_train(config: ml_collections.ConfigDict) -> None:
  """`train`: epochs, checkpoint cadence and keep policy, logging, how seeds step together."""
  _require(config, "train.num_epochs", _int_from(1), FROM_1)
  for key in ("train.checkpoint_every_epochs", "train.checkpoint_every_steps"):
    _require(config, key, _int_from(0), "an integer from 0 (off) to 2**31 - 1")
  _require(config, "train.keep_checkpoints", _int_from(1), FROM_1)
  _require(config, "train.keep_best", _int_from(0), "an integer from 0 (keep no best) to 2**31 - 1")
  metrics = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
  _require(config, "train.best_metric", lambda v: v in metrics, f"one of {', '.join(metrics)}")
  _require(config, "train.best_mode", lambda v: v in ("max", "min"), "'max' or 'min'")
  _require(config, "train.log_grad_norms", lambda v: isinstance(v, bool), "True or False")
  _require(
    config,
    "train.seeds_together",
    lambda v: v in ("auto", "unrolled", "vmap"),
    "'auto', 'unrolled' or 'vmap'",
  )


# Run in this order by `validate`; the `distributed` section is checked by
# research/training/distributed.py when the run starts its processes.
SECTIONS = (check_seed, check_data, check_model, check_optimizer, check_schedule, check_train)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` for the first key whose value is impossible: by each section's check
  (`SECTIONS`), then any number that is inf, nan or beyond float32's or int32's range."""
  for check in SECTIONS:
    check(config)
  for key, value in trees.flatten(config, sep=".").items():  # Anywhere, e.g. set by the file.
    problem = out_of_range(value)
    if problem:
      raise ConfigError(key, f"must be within range: {problem}")


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as indented JSON (what `config.json` in a workdir holds)."""
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)
