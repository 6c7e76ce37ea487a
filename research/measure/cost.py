"""`run.py cost`: what a block or model costs, measured three ways, every figure beside its ratio.

For each subject (`measure.subjects`: a block variant at an input shape, or a config's model) and
each pass (forward, forward_backward, train_step) the report holds the analytic FLOPs
(`measure.flops`, primary, where the counting conventions live), XLA's FLOPs and bytes accessed and
the compiled peak memory (`measure.xla`, the cross-check) and the seconds per call
(`measure.timing`). Ratios to a reference variant (the full 3x3) sit beside the analytic ones, time
beside FLOPs, because on a CPU they part: a 3x1+1x3 pair does 2/3 of a 3x3's FLOPs but moves twice
its bytes, and is not faster.

`run(config)` returns a JSON-ready report (`measure.schemas.COST_SCHEMA`);
`measure.text` renders it.
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from research.config import positive_int
from research.errors import ConfigError
from research.measure import flops, subjects, timing, xla
from research.measure.environment import environment
from research.measure.schemas import PASSES

MODEL_WARMUP = (
  2  # Untimed calls per pass when costing a config's model (which has no `cost` section).
)


def ratio(a: float | None, b: float | None) -> float | None:
  """`a / b`, or None where either is unknown or `b` is 0."""
  return None if a is None or b is None or b == 0 else a / b


def _rows(
  items: Sequence[subjects.Subject], warmup: int, repeats: int, passes: Sequence[str]
) -> list[dict]:
  """Measures `passes` of each subject: analytic FLOPs (naive and in-bounds),
  XLA's figures and the time.

  Every pass is compiled before any is timed; the subjects' calls of one pass are timed taking turns
  (`timing.measure_interleaved`), so that their time ratios share the machine's load.
  """
  rows, compiled = [], {}
  for i, subject in enumerate(items):
    totals = subject.totals
    analytic = {
      "forward": totals.forward_flops,
      "forward_backward": totals.forward_backward_flops,
      "train_step": totals.train_step_flops,
    }
    in_bounds = {
      "forward": flops.in_bounds_flops(subject.layers, "forward"),
      "forward_backward": flops.in_bounds_flops(subject.layers, "forward_backward"),
    }
    in_bounds["train_step"] = (
      in_bounds["forward_backward"] + totals.train_step_flops - totals.forward_backward_flops
    )
    measured = {}
    for name in passes:
      fn, args = subject.passes[name]
      compiled[i, name], figures = xla.compile_pass(fn, args)
      measured[name] = {"flops": analytic[name], "flops_in_bounds": in_bounds[name], **figures}
    rows.append(
      {
        "label": subject.label,
        "params": totals.params,
        "macs": totals.macs,
        "totals": totals.to_dict(),
        "layers": [l.to_dict() for l in subject.layers],
        "passes": measured,
      }
    )
  for name in passes:
    calls = {i: (compiled[i, name], subject.passes[name][1]) for i, subject in enumerate(items)}
    for i, seconds in timing.measure_interleaved(calls, warmup=warmup, repeats=repeats).items():
      rows[i]["passes"][name]["seconds"] = seconds.to_dict()
  return rows


def _add_ratios(rows: list[dict], default_reference: str, key: str) -> None:
  """Adds to each row its `reference` label and the ratio of every figure to that row's."""
  by_label = {r["label"]: r for r in rows}
  for row in rows:
    reference = row.get("reference") or default_reference
    if reference not in by_label:
      raise ConfigError(
        key, f"reference {reference!r} is not a variant label; labels: {', '.join(by_label)}"
      )
    ref = by_label[reference]
    row["reference"] = reference
    row["ratio"] = {
      "params": ratio(row["params"], ref["params"]),
      "macs": ratio(row["macs"], ref["macs"]),
    }
    for name, p in row["passes"].items():
      q = ref["passes"][name]
      p["ratio"] = {
        "flops": ratio(p["flops"], q["flops"]),
        "xla_flops": ratio(p["xla_flops"], q["xla_flops"]),
        "xla_bytes": ratio(p["xla_bytes"], q["xla_bytes"]),
        "peak_bytes": ratio(p["peak_bytes"], q["peak_bytes"]),
        "seconds": ratio(p["seconds"]["median"], q["seconds"]["median"]),
      }


def _get(
  section: ml_collections.ConfigDict, name: str, key: str, check: Callable[[Any], bool], what: str
):
  if name not in section:
    raise ConfigError(f"{key}.{name}", f"is missing; it must be {what}")
  value = section[name]
  if not check(value):
    raise ConfigError(f"{key}.{name}", f"must be {what}, got {value!r}")
  return value


def _positive_ints(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) > 0 and all(positive_int(i) for i in v)


def _table(
  config: ml_collections.ConfigDict, name: str, warmup: int, repeats: int, passes: Sequence[str]
) -> dict:
  """One comparison table of `config.cost.<name>`: every variant at every
  (resolution, c_in, width)."""
  key = f"cost.{name}"
  if name not in config.cost or not isinstance(config.cost[name], ml_collections.ConfigDict):
    raise ConfigError("cost.tables", f"names {name!r}, but there is no section {key}")
  section = config.cost[name]
  batch = _get(section, "batch_size", key, positive_int, "a positive integer")
  resolutions = _get(
    section, "resolutions", key, _positive_ints, "a tuple of positive integers (pixels a side)"
  )
  widths = _get(
    section, "widths", key, _positive_ints, "a tuple of positive integers (output channels)"
  )
  in_channels = section.get("in_channels") or (None,)
  if in_channels != (None,) and not _positive_ints(in_channels):
    raise ConfigError(
      f"{key}.in_channels", f"must be None (= each width) or positive integers, got {in_channels!r}"
    )
  variants = _get(
    section,
    "variants",
    key,
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0,
    "a tuple of variants, e.g. ({'label': '3x3', 'blocks': ({'name': 'conv'},)},)",
  )
  reference = section.get("reference") or dict(variants[0]).get("label")
  tx, opt_flops = subjects.optimizer(config)
  settings = []
  for resolution, c_in, width in itertools.product(resolutions, in_channels, widths):
    input_shape = (batch, resolution, resolution, c_in or width)
    found = []
    for i, variant in enumerate(variants):
      where = f"{key}.variants[{i}]"
      if not isinstance(variant.get("label"), str):
        raise ConfigError(f"{where}.label", "every variant needs a string label")
      module = subjects.variant_module(variant, width, where)
      found.append(
        subjects.block_subject(
          variant["label"], module, input_shape, tx, opt_flops, config.get("seed", 0), where
        )
      )
    rows = _rows(found, warmup, repeats, passes)
    for row, variant in zip(rows, variants):
      row["blocks"] = [dict(b) for b in variant["blocks"]]
      if variant.get("reference"):
        row["reference"] = variant["reference"]
    _add_ratios(rows, reference, f"{key}.reference")
    settings.append(
      {"batch_size": batch, "input_shape": list(input_shape[1:]), "width": width, "rows": rows}
    )
  return {"name": name, "title": section.get("title") or name, "settings": settings}


def run(config: ml_collections.ConfigDict) -> dict:
  """The cost report (`COST_SCHEMA`) of `config`: its `cost` tables of block variants,
  or else its model.

  `config.cost` holds `tables` (the names of its table sections, in order), `warmup`, `repeats`,
  `passes` (those of `PASSES` to measure) and one section per table: `title`, `batch_size`,
  `resolutions`, `widths`, `in_channels` (None: equal to the width), `reference`
  (a variant label) and `variants`.
  """
  if "cost" in config:
    section = config.cost
    warmup = _get(section, "warmup", "cost", positive_int, "a positive integer")
    repeats = _get(
      section,
      "repeats",
      "cost",
      lambda v: positive_int(v) and v >= timing.MIN_REPEATS,
      f"an integer >= {timing.MIN_REPEATS}",
    )
    passes = tuple(section.get("passes") or PASSES)
    for name in passes:
      if name not in PASSES:
        raise ConfigError("cost.passes", f"unknown pass {name!r}; choose from: {', '.join(PASSES)}")
    names = _get(
      section,
      "tables",
      "cost",
      lambda v: isinstance(v, (tuple, list)) and len(v) > 0,
      "a tuple of table section names",
    )
    tables = [_table(config, name, warmup, repeats, passes) for name in names]
  elif "model" in config:
    warmup, repeats = MODEL_WARMUP, timing.MIN_REPEATS
    subject = subjects.model_subject(config)
    [row] = _rows([subject], warmup, repeats, PASSES)
    _add_ratios([row], subject.label, "model.name")
    shape = list(subject.passes["forward"][1][1].shape[1:])
    tables = [
      {
        "name": "model",
        "title": f"model {config.model.name!r} of the experiment",
        "settings": [
          {"batch_size": config.data.batch_size, "input_shape": shape, "width": None, "rows": [row]}
        ],
      }
    ]
  else:
    raise ConfigError("cost", "this config has neither a cost section nor a model to cost")
  return {
    "schema": "convlab.cost/1",
    "environment": environment(),
    "warmup": warmup,
    "repeats": repeats,
    "tables": tables,
  }
