"""Ablations: variants of a base experiment trained over several seeds, beside what each costs.

An ablation config (`experiments/ablations.py`, `experiments/factorization.py`, ...) names a base
experiment, the seeds, and tables of variants; a variant is a label and config overrides on the base
(`model.block=factorized`). For every variant the seeds train together (`train.train_seeds`) in
`<out>/runs/<table>/<variant>/seed_<s>` (a run that finished with the same config is read back, not
rerun; an interrupted one resumes from its checkpoint); then the variants' train steps
(`measure.subjects.model_subject`) are compiled once each (XLA's FLOP count) and timed with the one
harness, taking turns (`measure.timing.measure_interleaved`). Each table row reports
  params          trainable parameters
  FLOPs           analytic FLOPs of one train step at the base batch size (measure.flops), and XLA's
  step time       median seconds of one jitted train step (after warm-up, >= 5 repetitions)
  test accuracy   the final epoch's, mean and 95% Student-t interval over the seeds
  difference      from the reference variant, paired by seed, with its interval and whether it
                  excludes 0 (`ablate.stats`)
with the cost ratios to the table's reference variant. `run` writes `<out>/results.json` and renders
it (`ablate.report`: `results.md`, `results.csv`, the plots); `report(out)` renders them again from
the saved runs, training nothing. Accuracies are deterministic (same config and seeds, same numbers
on CPU); times are not.
"""

import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import Iterator

import jax
import ml_collections
import tqdm

from research import config as config_lib
from research.ablate import report, stats
from research.config import is_int
from research.errors import ConfigError, UserError
from research.measure import subjects, timing
from research.measure.cost import ratio
from research.measure.environment import environment
from research.measure.xla import xla_cost
from research.training import metrics, train
from research.training.plan import make_plan

log = logging.getLogger(__name__)

# experiments/ beside research/: ablation files name their base experiment relative to it.
EXPERIMENTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences the training runs' progress (the `research.training` loggers below warnings)
  inside the `with`; the ablation's own lines go on."""
  logger = logging.getLogger("research.training")
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def variant_config(
  ablation: ml_collections.ConfigDict, table: ml_collections.ConfigDict, variant: dict, seed: int
) -> ml_collections.ConfigDict:
  """The base experiment (the table's `base` where it names one, else the ablation's) with the
  ablation's overrides, the variant's overrides and `seed=<seed>`."""
  path = os.path.join(EXPERIMENTS, table.get("base", ablation.base))
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


def check(config: ml_collections.ConfigDict) -> int:
  """Builds every run's config and model before anything trains (from the datasets' static
  metadata: nothing is prepared or read): a bad variant fails first, naming itself. Returns the
  training steps of all runs together."""
  total = 0
  for name, table in _tables(config):
    for variant in table.variants:
      try:
        plan = make_plan(
          variant_config(config.ablation, table, variant, config.ablation.seeds[0]), static=True
        )
      except UserError as e:
        raise UserError(f"ablation table {name!r}, variant {variant['label']!r}: {e}") from None
      total += plan.total_steps * len(config.ablation.seeds)
  return total


def _finished(run_config: ml_collections.ConfigDict, workdir: str) -> list[dict] | None:
  """The records of a run in `workdir` that finished with exactly this config, else None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  # Where a run ran (`distributed`: which processes) is not what it is.
  wanted = json.loads(config_lib.to_json(run_config))
  same = {k: v for k, v in saved.items() if k != "distributed"} == {
    k: v for k, v in wanted.items() if k != "distributed"
  }
  records = metrics.read(workdir)
  if same and records and records[-1]["epoch"] == run_config.train.num_epochs:
    return records
  return None


class _Progress:
  """One progress bar over every run of the ablation, in training steps (all seeds), with the time
  left; where the output is not a terminal, a plain line every `train.PROGRESS_SECONDS` instead."""

  def __init__(self, total: int):
    self.bar = tqdm.tqdm(
      total=total, desc="ablation", unit="step", disable=None, dynamic_ncols=True
    )
    self.log = (
      train.ProgressLog(0, total, time.perf_counter(), log, "ablation: ")
      if self.bar.disable
      else None
    )

  def advance(self, steps: int) -> None:
    self.bar.update(steps)
    if self.log is not None:
      self.log.add(steps)

  def close(self) -> None:
    self.bar.close()


def run_table(
  config: ml_collections.ConfigDict, name: str, table: ml_collections.ConfigDict, out: str,
  progress: _Progress,
) -> tuple[dict, int]:  # fmt: skip
  """Trains every variant of one table over the seeds (those not finished yet), then compiles and
  times their train steps taking turns (`timing.measure_interleaved`, so load on a shared machine
  falls on all alike); returns (the table, summarized, and how many runs it trained)."""
  seeds = list(config.ablation.seeds)
  rows, calls, per_seed, trained = [], {}, {}, 0
  for variant in table.variants:
    label = variant["label"]
    runs, todo = {}, {}
    for seed in seeds:
      workdir = report.run_dir(out, name, label, seed)
      records = _finished(variant_config(config.ablation, table, variant, seed), workdir)
      if records is None:
        todo[seed] = workdir
      else:
        runs[seed] = records
    if runs:  # Read back: their steps count as done.
      plan = make_plan(variant_config(config.ablation, table, variant, seeds[0]), static=True)
      progress.advance(plan.total_steps * len(runs))
    if todo:  # The seeds not yet done train together (`train.train_seeds`).
      progress.bar.set_postfix_str(f"{name}: {label}, seeds {', '.join(map(str, todo))}")
      log.info(f"ablation: training {name}: {label}, seeds {', '.join(map(str, todo))}")
      with _quiet():
        train.train_seeds(
          variant_config(config.ablation, table, variant, next(iter(todo))), todo,
          advance=progress.advance,
        )  # fmt: skip
      trained += len(todo)
      for seed, workdir in todo.items():
        runs[seed] = metrics.read(workdir)
    per_seed[label] = runs
    subject = subjects.model_subject(variant_config(config.ablation, table, variant, seeds[0]))
    step, args = subject.passes["train_step"]
    compiled = jax.jit(step).lower(*args).compile()
    calls[label] = (compiled, args)
    rows.append(
      {
        "label": label,
        "overrides": list(variant["overrides"]),
        "params": subject.totals.params,
        "train_step_flops": subject.totals.train_step_flops,
        "xla_flops": xla_cost(compiled)["flops"],
      }
    )
  progress.bar.set_postfix_str(f"{name}: timing the train steps")
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
      "xla_flops": None
      if row["xla_flops"] is None or not reference["xla_flops"]
      else ratio(row["xla_flops"], reference["xla_flops"]),
      "step_seconds": ratio(row["step_seconds"]["median"], reference["step_seconds"]["median"]),
    }
  result = {"name": name, "title": table.title, "reference": table.reference, "rows": rows}
  report.summarize(result, seeds, per_seed)
  return result, trained


def run(config: ml_collections.ConfigDict, out: str) -> tuple[dict, list[str]]:
  """Runs every table of `config.ablation`; writes `results.json` and its renderings into `out`
  (`ablate.report`); returns (the results, the files written)."""
  started = time.perf_counter()
  totals = check(config)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the ablation output folder {out!r}: {e.strerror}") from None
  chosen = _tables(config)
  results = {
    "schema": "convlab.ablation/2",
    "environment": environment(),
    "date": datetime.date.today().isoformat(),
    "base": config.ablation.base,
    "overrides": list(config.ablation.overrides),
    "seeds": list(config.ablation.seeds),
    "level": stats.LEVEL,
    "tables": [],
  }
  trained = 0
  progress = _Progress(totals)
  try:
    for name, table in chosen:
      result, n = run_table(config, name, table, out, progress)
      results["tables"].append(result)
      trained += n
  finally:
    progress.close()
  results["trained_runs"] = trained
  results["wall_seconds"] = time.perf_counter() - started
  return results, report.render(results, out)


def rerender(out: str) -> tuple[dict, list[str]]:
  """`run.py report`: the results in `out` summarized again from its saved runs and rendered
  again, training and timing nothing; returns (the results, the files written)."""
  results = report.refresh(report.load(out), out)
  return results, report.render(results, out)
