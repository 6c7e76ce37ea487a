"""`run.py cost`: what a block or model costs, measured three ways, every figure beside its ratio.

For each subject (`measure.subjects`: a block variant at an input shape, or a config's model) and
each pass (forward, forward_backward, train_step) the report holds the analytic FLOPs
(`measure.flops`, primary, where the counting conventions live), XLA's FLOPs and bytes accessed and
the compiled peak memory (`measure.xla`, the cross-check) and the seconds per call
(`measure.timing`). Ratios to a reference variant (the full 3x3) sit beside the analytic ones, time
beside FLOPs, because on a CPU they part: a 3x1+1x3 pair does 2/3 of a 3x3's FLOPs, but its bytes
accessed and its time do not follow (the README's table of `run.py cost` shows by how much).

`run(config)` returns the report (`measure.reports.CostReport`) as a JSON-ready dict;
`measure.text` renders it.
"""

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from research.config import positive_int
from research.errors import ConfigError
from research.measure import flops, reports, subjects, timing, xla
from research.measure.environment import environment

PASSES = ("forward", "forward_backward", "train_step")  # The passes a cost report may measure.
MODEL_WARMUP = 2  # Untimed calls per pass when costing a config's model (it has no `cost` section).


def ratio(a: float | None, b: float | None) -> float | None:
  """`a / b`, or None where either is unknown or `b` is 0."""
  return None if a is None or b is None or b == 0 else a / b


def _analytic(subject: subjects.Subject, name: str) -> dict[str, int]:
  """`{"flops", "flops_in_bounds"}` of the pass `name`: every tap, and the taps inside the input."""
  totals = subject.totals
  fwd_bwd = flops.in_bounds_flops(subject.layers, "forward_backward")
  found = {
    "forward": (totals.forward_flops, flops.in_bounds_flops(subject.layers, "forward")),
    "forward_backward": (totals.forward_backward_flops, fwd_bwd),
    "train_step": (
      totals.train_step_flops,
      fwd_bwd + totals.train_step_flops - totals.forward_backward_flops,  # + the optimizer's.
    ),
  }[name]
  return {"flops": found[0], "flops_in_bounds": found[1]}


def _rows(
  items: Sequence[subjects.Subject],
  references: Sequence[str],
  warmup: int,
  repeats: int,
  passes: Sequence[str],
  key: str,
) -> list[reports.CostRow]:
  """Measures `passes` of each subject (analytic FLOPs, XLA's figures, the time) and gives each
  row its ratios to the row labelled `references[i]` (a `ConfigError` naming `key` if none is).

  Every pass is compiled before any is timed; the subjects' calls of one pass are timed taking turns
  (`timing.measure_interleaved`), so that their time ratios share the machine's load.
  """
  labels = [subject.label for subject in items]
  for reference in references:
    if reference not in labels:
      raise ConfigError(
        key, f"reference {reference!r} is not a variant label; labels: {', '.join(labels)}"
      )
  compiled, found = {}, {}
  for i, subject in enumerate(items):
    for name in passes:
      fn, args = subject.passes[name]
      compiled[i, name], figures = xla.compile_pass(fn, args)
      found[i, name] = {**_analytic(subject, name), **figures}
  for name in passes:
    calls = {i: (compiled[i, name], subject.passes[name][1]) for i, subject in enumerate(items)}
    for i, seconds in timing.measure_interleaved(calls, warmup=warmup, repeats=repeats).items():
      found[i, name]["seconds"] = seconds
  rows = []
  for i, (subject, reference) in enumerate(zip(items, references)):
    r = labels.index(reference)
    costs = {}
    for name in passes:
      p, q = found[i, name], found[r, name]
      same = {k: ratio(p[k], q[k]) for k in ("flops", "xla_flops", "xla_bytes", "peak_bytes")}
      seconds = ratio(p["seconds"].median, q["seconds"].median)
      costs[name] = reports.PassCost(**p, ratio=reports.PassRatio(**same, seconds=seconds))
    totals, ref = subject.totals, items[r].totals
    rows.append(
      reports.CostRow(
        label=subject.label,
        reference=reference,
        blocks=None,
        params=totals.params,
        macs=totals.macs,
        totals=totals,
        ratio=reports.RowRatio(
          params=ratio(totals.params, ref.params), macs=ratio(totals.macs, ref.macs)
        ),
        layers=list(subject.layers),
        passes=costs,
      )
    )
  return rows


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
) -> reports.CostTable:
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
    references = [variant.get("reference") or reference for variant in variants]
    rows = _rows(found, references, warmup, repeats, passes, f"{key}.reference")
    rows = [
      dataclasses.replace(row, blocks=[dict(b) for b in variant["blocks"]])
      for row, variant in zip(rows, variants)
    ]
    settings.append(
      reports.CostSetting(
        batch_size=batch, input_shape=list(input_shape[1:]), width=width, rows=rows
      )
    )
  return reports.CostTable(name=name, title=section.get("title") or name, settings=settings)


def run(config: ml_collections.ConfigDict) -> dict:
  """The cost report of `config`, its `cost` tables of block variants or else its model, as
  `dataclasses.asdict` of a `reports.CostReport` (JSON-ready).

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
    rows = _rows([subject], [subject.label], warmup, repeats, PASSES, "model.name")
    batch, *shape = subject.passes["forward"][1][1].shape
    setting = reports.CostSetting(batch_size=batch, input_shape=shape, width=None, rows=rows)
    title = f"model {config.model.name!r} of the experiment"
    tables = [reports.CostTable(name="model", title=title, settings=[setting])]
  else:
    raise ConfigError("cost", "this config has neither a cost section nor a model to cost")
  report = reports.CostReport(
    environment=environment(), warmup=warmup, repeats=repeats, tables=tables
  )
  return dataclasses.asdict(report)
