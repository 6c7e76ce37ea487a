"""Ablations: variants of a base experiment trained over several seeds, beside what each costs.

An ablation config (`experiments/ablations.py`, `experiments/factorization.py`, ...) names a base
experiment, the seeds, and tables of variants; a variant is a label and config overrides on the base
(`model.block=factorized`). For every variant the seeds train together (`train.train_seeds`) in
`<out>/runs/<table>/<variant>/seed_<s>`; a run that finished with the same config is read back, an
interrupted one resumes from its checkpoint, and a run whose config an earlier run of the ablation
already has is that run, linked (`ablate.runs`). Then the variants' train steps
(`measure.subjects.model_subject`) are compiled once each (XLA's FLOP count) and timed with the one
harness, taking turns (`measure.timing.measure_interleaved`). Each table row reports
  params          trainable parameters
  FLOPs           analytic FLOPs of one train step at the base batch size (measure.flops), and XLA's
  step time       median seconds of one jitted train step (after `ablation.warmup` untimed steps,
                  over `ablation.repeats` timed ones)
  test accuracy   the final epoch's, mean and Student-t interval over the seeds (`ablate.stats`)
  difference      from the reference variant, paired by seed, with its interval and whether it
                  excludes 0
with the cost ratios to the table's reference variant. `run` writes `<out>/results.json` and renders
it (`ablate.report`: `results.md`, `results.csv`, the plots); `rerender(out)` renders them again
from the saved runs, training nothing. Accuracies are deterministic (same config and seeds, same
numbers on CPU); times are not.
"""

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator

import jax
import ml_collections

from research.ablate import report, runs, stats
from research.ablate.results import SCHEMA, Ratios, Results, Row, Table, load, refresh, summarize
from research.errors import UserError
from research.measure import subjects, timing
from research.measure.cost import ratio
from research.measure.environment import environment
from research.measure.xla import xla_cost
from research.progress import INTERVAL_SECONDS, Progress
from research.training import metrics, train
from research.training.plan import make_plan

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences the training runs' own lines (the `research.training` loggers below warnings)
  inside the `with`; the ablation's own lines go on."""
  logger = logging.getLogger("research.training")
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def check(config: ml_collections.ConfigDict) -> dict[tuple[str, str], int]:
  """Builds every variant's config and model before anything trains (from the datasets' static
  metadata: nothing is prepared or read): a bad variant fails first, naming itself. Returns the
  training steps of one seed of each variant, `{(table, label): steps}`."""
  steps = {}
  for name, table in runs.tables(config):
    for variant in table.variants:
      run_config = runs.variant_config(config.ablation, table, variant, config.ablation.seeds[0])
      try:
        plan = make_plan(run_config, static=True)
      except UserError as e:
        raise UserError(f"ablation table {name!r}, variant {variant['label']!r}: {e}") from None
      steps[name, variant["label"]] = plan.total_steps
  return steps


def _records(planned: list[runs.Run], progress: Progress) -> tuple[dict[int, list[dict]], int]:
  """Trains, links or reads back the runs of one variant (`planned`, one per seed); returns
  (`{seed: records}`, the runs trained)."""
  todo = {r.seed: r.workdir for r in planned if r.action == "train"}
  for run in planned:
    if run.action == "link":
      runs.link(run)
    elif run.action == "train":
      runs.unlink_stale(run)
  if todo:  # The seeds not yet done train together.
    what = f"{planned[0].table}: {planned[0].label}, seeds {', '.join(map(str, todo))}"
    progress.describe(what)
    log.info(f"ablation: training {what}")
    first = next(r for r in planned if r.action == "train")
    with _quiet():
      train.train_seeds(first.config, todo, progress=progress)
  return {r.seed: metrics.read(r.workdir) for r in planned}, len(todo)


def _ratios(row: dict, reference: dict) -> Ratios:
  return Ratios(
    params=ratio(row["params"], reference["params"]),
    train_step_flops=ratio(row["train_step_flops"], reference["train_step_flops"]),
    xla_flops=ratio(row["xla_flops"], reference["xla_flops"]),
    step_seconds=ratio(row["step_seconds"].median, reference["step_seconds"].median),
  )


def run_table(
  config: ml_collections.ConfigDict,
  name: str,
  table: ml_collections.ConfigDict,
  planned: list[runs.Run],
  progress: Progress,
) -> tuple[Table, int]:
  """Trains every variant of one table over the seeds (those `planned` to train), then compiles
  and times their train steps taking turns (`timing.measure_interleaved`, so load on a shared
  machine falls on all alike); returns (the table, summarized, and how many runs it trained)."""
  seeds = list(config.ablation.seeds)
  costs, calls, per_seed, trained = {}, {}, {}, 0
  for variant in table.variants:
    label = variant["label"]
    mine = [r for r in planned if r.table == name and r.label == label]
    per_seed[label], n = _records(mine, progress)
    trained += n
    subject = subjects.model_subject(mine[0].config)
    step, args = subject.passes["train_step"]
    compiled = jax.jit(step).lower(*args).compile()
    calls[label] = (compiled, args)
    costs[label] = {
      "params": subject.totals.params,
      "train_step_flops": subject.totals.train_step_flops,
      "xla_flops": xla_cost(compiled)["flops"],
    }
  progress.describe(f"{name}: timing the train steps")
  seconds = timing.measure_interleaved(
    calls, warmup=config.ablation.warmup, repeats=config.ablation.repeats
  )
  for label, timed in seconds.items():
    costs[label]["step_seconds"] = timed
  rows = [
    Row(
      label=v["label"],
      overrides=list(v["overrides"]),
      **costs[v["label"]],
      ratio=_ratios(costs[v["label"]], costs[table.reference]),
    )
    for v in table.variants
  ]
  result = Table(name=name, title=table.title, reference=table.reference, rows=rows)
  return summarize(result, seeds, per_seed), trained


def run(
  config: ml_collections.ConfigDict, out: str, progress_interval: float = INTERVAL_SECONDS
) -> tuple[Results, list[str]]:
  """Runs every table of `config.ablation`; writes `results.json` and its renderings into `out`
  (`ablate.report`); returns (the results, the files written). Where the output is not a
  terminal, a progress line is logged every `progress_interval` seconds (0: at every step)."""
  started = time.perf_counter()
  steps = check(config)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the ablation output folder {out!r}: {e.strerror}") from None
  planned = runs.plan(config, out)
  counted = [r for r in planned if r.action != "link"]  # A linked run trains no step of its own.
  progress = Progress(
    sum(steps[r.table, r.label] for r in counted),
    initial=sum(steps[r.table, r.label] for r in counted if r.action == "read"),
    desc="ablation",
    logger=log,
    interval=progress_interval,
  )
  tables, trained = [], 0
  try:
    for name, table in runs.tables(config):
      result, n = run_table(config, name, table, planned, progress)
      tables.append(result)
      trained += n
  finally:
    progress.close()
  results = Results(
    schema=SCHEMA,
    environment=environment(),
    date=datetime.date.today().isoformat(),
    base=config.ablation.base,
    overrides=list(config.ablation.overrides),
    seeds=list(config.ablation.seeds),
    level=stats.LEVEL,
    tables=tables,
    trained_runs=trained,
    wall_seconds=time.perf_counter() - started,
  )
  return results, report.render(results, out)


def rerender(out: str) -> tuple[Results, list[str]]:
  """`run.py report`: the results in `out` summarized again from its saved runs (`out/runs`) and
  rendered again, training and timing nothing; returns (the results, the files written). Results
  without their runs (a copy of `results.json`, as in `experiments/results/`) render as saved."""
  results = load(out)
  if os.path.isdir(os.path.join(out, "runs")):
    results = refresh(results, out)
  return results, report.render(results, out)
