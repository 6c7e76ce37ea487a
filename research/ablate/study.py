"""Ablations: variants of a base experiment trained over several seeds, beside what each costs.

An ablation config (`experiments/ablations.py`) names a base experiment, the seeds, and tables of
variants; a variant is a label and config overrides on the base (`model.block=factorized`). For
every variant and seed the base trains in `<out>/runs/<table>/<variant>/seed_<s>` (a run that
finished with the same config is read back, not rerun; an interrupted one resumes from its
checkpoint); then the variants' train steps (`measure.subjects.model_subject`) are timed with the
one harness, taking turns (`measure.timing.measure_interleaved`). Each table row reports
  test accuracy   final-epoch mean, sample standard deviation, min and max over the seeds
  params          trainable parameters
  FLOPs           analytic FLOPs of one train step at the base batch size (measure.flops)
  step time       median seconds of one jitted train step (after warm-up, >= 5 repetitions)
with the cost ratios to the table's reference variant in adjacent columns. `run` writes
`<out>/ablations.json`, and per table the Markdown and plot of `ablate.tables`.
Accuracies are deterministic (same config and seeds, same numbers on CPU); times are not.
"""

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator

import jax
import ml_collections
import tqdm

from research import config as config_lib
from research.ablate import tables
from research.config import is_int
from research.errors import ConfigError, UserError
from research.measure import subjects, timing
from research.measure.cost import ratio
from research.measure.environment import environment
from research.training import metrics, train
from research.training.plan import make_plan

# experiments/ beside research/: ablation files name their base experiment relative to it.
EXPERIMENTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences the training runs' progress (the `research` loggers below warnings)
  inside the `with`."""
  logger = logging.getLogger("research")
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def _slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")


def variant_config(
  ablation: ml_collections.ConfigDict, variant: dict, seed: int
) -> ml_collections.ConfigDict:
  """The base experiment with the ablation's overrides,
  the variant's overrides and `seed=<seed>`."""
  path = os.path.join(EXPERIMENTS, ablation.base)
  config = config_lib.load_config(path)
  config_lib.apply_overrides(config, [*ablation.overrides, *variant["overrides"], f"seed={seed}"])
  return config


def _tables(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The tables to run, checked: every variant has a unique label and overrides,
  the reference exists."""
  ablation = config.ablation
  if not ablation.seeds or any(not is_int(s) or s < 0 for s in ablation.seeds):
    raise ConfigError(
      "ablation.seeds", f"must be one or more non-negative ints, got {ablation.seeds!r}"
    )
  found = []
  for name in ablation.tables:
    if name not in ablation:
      raise ConfigError(
        "ablation.tables", f"names table {name!r}, which is not a section of ablation"
      )
    table = ablation[name]
    labels = [v.get("label") for v in table.variants]
    if not labels or len(set(labels)) != len(labels) or not all(isinstance(v, str) for v in labels):
      raise ConfigError(
        f"ablation.{name}.variants", "needs one or more variants with unique string labels"
      )
    if table.reference not in labels:
      raise ConfigError(
        f"ablation.{name}.reference", f"{table.reference!r} is not one of the labels {labels}"
      )
    found.append((name, table))
  return found


def check(config: ml_collections.ConfigDict) -> None:
  """Builds every run's config and model before anything trains: a bad variant fails first,
  naming itself."""
  for name, table in _tables(config):
    for variant in table.variants:
      try:
        make_plan(variant_config(config.ablation, variant, config.ablation.seeds[0]))
      except UserError as e:
        raise UserError(f"ablation table {name!r}, variant {variant['label']!r}: {e}") from None


def _finished(run_config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The last record of a run in `workdir` that finished with exactly this config, else None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      same = f.read() == config_lib.to_json(run_config)
  except OSError:
    return None
  records = metrics.read(workdir)
  if same and records and records[-1]["epoch"] == run_config.train.num_epochs:
    return records[-1]
  return None


def run_table(
  config: ml_collections.ConfigDict,
  name: str,
  table: ml_collections.ConfigDict,
  out: str,
  bar: tqdm.tqdm,
) -> dict:
  """Trains every variant of one table over the seeds, then times their train steps taking turns
  (`timing.measure_interleaved`, so load on a shared machine falls on all alike);
  returns the rows."""
  rows, calls = [], {}
  for variant in table.variants:
    records, todo = {}, {}
    for seed in config.ablation.seeds:
      workdir = os.path.join(out, "runs", name, _slug(variant["label"]), f"seed_{seed}")
      records[seed] = _finished(variant_config(config.ablation, variant, seed), workdir)
      if records[seed] is None:
        todo[seed] = workdir
      else:
        bar.update()
    if todo:  # The seeds not yet done train together (`train.train_seeds`).
      bar.set_postfix_str(f"{name}: {variant['label']}, seeds {', '.join(map(str, todo))}")
      with _quiet():
        records.update(
          train.train_seeds(variant_config(config.ablation, variant, next(iter(todo))), todo)
        )
      bar.update(len(todo))
    accuracies = [records[seed]["test_accuracy"] for seed in config.ablation.seeds]
    subject = subjects.model_subject(
      variant_config(config.ablation, variant, config.ablation.seeds[0])
    )
    step, args = subject.passes["train_step"]
    calls[variant["label"]] = (jax.jit(step), args)
    rows.append(
      {
        "label": variant["label"],
        "overrides": list(variant["overrides"]),
        "test_accuracy": tables.summary(accuracies),
        "params": subject.totals.params,
        "train_step_flops": subject.totals.train_step_flops,
      }
    )
  bar.set_postfix_str(f"{name}: timing the train steps")
  seconds = timing.measure_interleaved(
    calls, warmup=config.ablation.warmup, repeats=config.ablation.repeats
  )
  for row in rows:
    row["step_seconds"] = seconds[row["label"]].to_dict()
  reference = next(r for r in rows if r["label"] == table.reference)
  for row in rows:
    row["ratio"] = {
      "params": ratio(row["params"], reference["params"]),
      "train_step_flops": ratio(row["train_step_flops"], reference["train_step_flops"]),
      "step_seconds": ratio(row["step_seconds"]["median"], reference["step_seconds"]["median"]),
    }
  return {"name": name, "title": table.title, "reference": table.reference, "rows": rows}


def run(config: ml_collections.ConfigDict, out: str) -> dict:
  """Runs every table of `config.ablation`; writes JSON, Markdown and PNG into `out`;
  returns the report."""
  check(config)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the ablation output folder {out!r}: {e.strerror}") from None
  chosen = _tables(config)
  seeds = config.ablation.seeds
  total = sum(len(t.variants) for _, t in chosen) * len(seeds)
  report = {
    "schema": "convlab.ablation/1",
    "environment": environment(),
    "base": config.ablation.base,
    "overrides": list(config.ablation.overrides),
    "seeds": list(seeds),
    "tables": [],
  }
  with tqdm.tqdm(total=total, desc="ablation runs", unit="run", dynamic_ncols=True) as bar:
    for name, table in chosen:
      result = run_table(config, name, table, out, bar)
      report["tables"].append(result)
      with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(tables.markdown(result, len(seeds)))
      tables.plot(result, os.path.join(out, f"{name}.png"))
  with open(os.path.join(out, "ablations.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report
