"""An ablation's results as data: `Results` of `Table`s of `Row`s (dataclasses), written to
`<out>/results.json` as `dataclasses.asdict` gives them (`to_json`) and read back (`load`, `read`).

An ablation's folder `<out>` holds `results.json` and its runs, `runs/<table>/<label>/seed_<s>`
(`run_dir`). `summarize` fills a table's accuracies, paired differences and gradient norms from the
runs' records; `refresh` does it again from the saved runs, so that `run.py report` renders
everything again without training.

Accuracies are fractions, FLOPs counts and times seconds (`ablate.tables` shows percentages and
milliseconds). The JSON keys are the field names, in their order; a row read back from a file
without its accuracies (`test_accuracy`, `difference`, `grad_norms`) has them None until
`summarize` fills them.
"""

import dataclasses
import json
import os
import re
import statistics

from research.ablate import stats
from research.errors import UserError, first_line
from research.measure.environment import Environment
from research.measure.timing import Timing
from research.training import metrics

SCHEMA = "convlab.ablation/2"
RESULTS = "results.json"
GRAD_NORM = "grad_norm/"  # Prefix of the per-layer gradient norms in a run's metrics.jsonl.


@dataclasses.dataclass(frozen=True)
class Ratios:
  """A row's costs divided by the reference row's (None where either is unknown)."""

  params: float | None
  train_step_flops: float | None
  xla_flops: float | None
  step_seconds: float | None  # Of the medians.


@dataclasses.dataclass(frozen=True)
class Row:
  """One variant of a table: its config overrides, its costs, its accuracy over the seeds."""

  label: str
  overrides: list[str]
  params: int  # Trainable parameters.
  train_step_flops: int  # Analytic FLOPs of one train step (`research.measure.flops`).
  xla_flops: float | None  # XLA's count for the compiled train step (None: the backend gives none).
  step_seconds: Timing  # One jitted train step, timed with the other variants taking turns.
  ratio: Ratios
  test_accuracy: stats.Interval | None = None  # The final epoch's, over the seeds.
  difference: stats.Paired | None = None  # From the reference, paired by seed; None for it.
  grad_norms: dict[str, list[float]] | None = None  # {layer: [norm after each epoch]}, seed mean.


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of variants, compared with its `reference` row."""

  name: str
  title: str
  reference: str  # The label of the reference row.
  rows: list[Row]
  resolution: stats.Resolution | None = None  # What the seeds can resolve here.


@dataclasses.dataclass(frozen=True)
class Results:
  """Everything an ablation measured, and where and how."""

  schema: str
  environment: Environment
  date: str  # ISO date of the run.
  base: str  # The base experiment, under experiments/.
  overrides: list[str]  # The ablation's overrides, applied to every run.
  seeds: list[int]
  level: float  # Confidence level of the intervals.
  tables: list[Table]
  trained_runs: int  # The runs this call trained (not read back).
  wall_seconds: float  # Of the call that wrote the results.


def run_dir(out: str, table: str, label: str, seed: int) -> str:
  """Where seed `seed` of variant `label` of table `table` trains: `<out>/runs/<table>/<label>/
  seed_<seed>` (the label made a safe folder name)."""
  slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")
  return os.path.join(out, "runs", table, slug, f"seed_{seed}")


def to_json(results: Results) -> str:
  """`results.json`'s text: `dataclasses.asdict(results)` as indented JSON."""
  return json.dumps(dataclasses.asdict(results), indent=1, allow_nan=False) + "\n"


def _row(data: dict) -> Row:
  def optional(cls, value):
    return None if value is None else cls(**value)

  return Row(
    **{
      **data,
      "step_seconds": Timing(**data["step_seconds"]),
      "ratio": Ratios(**data["ratio"]),
      "test_accuracy": optional(stats.Interval, data.get("test_accuracy")),
      "difference": optional(stats.Paired, data.get("difference")),
    }
  )


def from_dict(data: dict) -> Results:
  """The `Results` of a parsed `results.json` (a missing or unknown key is a `TypeError` or a
  `KeyError`)."""
  tables = [
    Table(
      **{
        **t,
        "rows": [_row(r) for r in t["rows"]],
        "resolution": None if t.get("resolution") is None else stats.Resolution(**t["resolution"]),
      }
    )
    for t in data["tables"]
  ]
  return Results(**{**data, "environment": Environment(**data["environment"]), "tables": tables})


def read(path: str) -> Results:
  """The results in the file `path` (a `UserError` if it cannot be read as ablation results)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} cannot be read ({first_line(e)}); run the ablation again") from None
  schema = data.get("schema") if isinstance(data, dict) else None
  if schema != SCHEMA:
    raise UserError(
      f"{path} has schema {schema!r}, not {SCHEMA!r}; run the ablation again to rewrite it"
    )
  try:
    return from_dict(data)
  except (KeyError, TypeError) as e:
    raise UserError(
      f"{path} is not the results of an ablation ({first_line(e)}); run the ablation again"
    ) from None


def load(out: str) -> Results:
  """The results an ablation wrote into `out` (a missing or unreadable file is a `UserError`)."""
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    raise UserError(
      f"{path} does not exist: no ablation has finished in {out}; run `python run.py ablate "
      f"--out={out}` first"
    )
  return read(path)


def grad_norms(records: list[dict]) -> dict[str, list[float]] | None:
  """`{layer: [norm at the end of each epoch]}` from a run's records, None if it logged none."""
  layers = [k[len(GRAD_NORM) :] for k in records[-1] if k.startswith(GRAD_NORM)]
  if not layers:
    return None
  return {layer: [r[GRAD_NORM + layer] for r in records] for layer in layers}


def _mean_norms(norms: list[dict[str, list[float]] | None]) -> dict[str, list[float]] | None:
  """Each layer's norm per epoch, the mean over the seeds' (None if a seed logged none)."""
  if any(n is None for n in norms):
    return None
  return {
    layer: [statistics.fmean(n[layer][e] for n in norms) for e in range(len(norms[0][layer]))]
    for layer in norms[0]
  }


def summarize(table: Table, seeds: list[int], per_seed: dict[str, dict[int, list[dict]]]) -> Table:
  """`table` with each row's accuracy filled from its runs' records by seed
  (`per_seed[label][seed]`): `test_accuracy` (`stats.interval`), `difference` from the reference
  (`stats.paired`, by seed; None for the reference), `grad_norms` (`_mean_norms`), and the table's
  `resolution` (`stats.resolvable`, from the median spread of the paired differences)."""
  reference = [per_seed[table.reference][s][-1]["test_accuracy"] for s in seeds]
  rows = []
  for row in table.rows:
    runs = per_seed[row.label]
    accuracies = [runs[s][-1]["test_accuracy"] for s in seeds]
    rows.append(
      dataclasses.replace(
        row,
        test_accuracy=stats.interval(accuracies),
        difference=None if row.label == table.reference else stats.paired(accuracies, reference),
        grad_norms=_mean_norms([grad_norms(runs[s]) for s in seeds]),
      )
    )
  spreads = [r.difference.std for r in rows if r.difference and r.difference.std is not None]
  resolution = stats.resolvable(statistics.median(spreads) if spreads else None, len(seeds))
  return dataclasses.replace(table, rows=rows, resolution=resolution)


def _records(out: str, table: str, label: str, seed: int) -> list[dict]:
  workdir = run_dir(out, table, label, seed)
  records = metrics.read(workdir) if os.path.isdir(workdir) else []
  if not records:
    raise UserError(
      f"the ablation in {out} has no finished run for table {table!r}, variant {label!r}, seed "
      f"{seed} ({workdir}); run `python run.py ablate` with its config to train it"
    )
  return records


def refresh(results: Results, out: str) -> Results:
  """`results` with every table summarized again from the saved runs under `out` (a missing run
  is a `UserError` naming it)."""
  tables = []
  for table in results.tables:
    per_seed = {
      row.label: {s: _records(out, table.name, row.label, s) for s in results.seeds}
      for row in table.rows
    }
    tables.append(summarize(table, results.seeds, per_seed))
  return dataclasses.replace(results, tables=tables)
