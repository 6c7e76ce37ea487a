"""An ablation's results as text: each table in Markdown (`markdown`), `results.md` (`document`)
and `results.csv` (`csv_text`).

Accuracies are percentages in Markdown (differences: percentage points), times milliseconds and
FLOPs millions; the CSV keeps the units of `results.json` (fractions, seconds, FLOPs).
"""

import csv
import io

from research.ablate.results import Results, Table
from research.ablate.stats import Interval

RESOLVED = {True: "yes", False: "no", None: "–"}  # A row's `resolved` column.


def _pct(x: float | None, signed: bool = False) -> str:
  if x is None:
    return "–"
  return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _ci(summary: Interval, signed: bool = False) -> str:
  """`mean [low, high]` in percent (percentage points if `signed`)."""
  if summary.half is None:
    return _pct(summary.mean, signed)
  return f"{_pct(summary.mean, signed)} [{_pct(summary.low, signed)}, {_pct(summary.high, signed)}]"


def _flops(x: float | None) -> str:
  return "–" if x is None else f"{x / 1e6:,.1f} M"


def _ratio(x: float | None, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def markdown(table: Table, seeds: int) -> str:
  """One table as Markdown: cost and its ratio to the reference side by side, then accuracy with
  its 95% interval, and the paired difference from the reference with its interval and whether it
  is resolved; then a line on what the design can resolve."""
  lines = [
    f"**{table.title}** (ratios and differences against {table.reference}; {seeds} seeds, "
    "paired by seed; 95% Student-t intervals)",
    "",
    "| variant | params | ratio | train-step FLOPs | ratio | XLA FLOPs | ratio | step time | "
    "ratio | test accuracy % [95% CI] | difference, points [95% CI] | resolved |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
  ]
  for r in table.rows:
    d = r.difference
    lines.append(
      f"| {r.label} | {r.params:,} | {_ratio(r.ratio.params)} | "
      f"{_flops(r.train_step_flops)} | {_ratio(r.ratio.train_step_flops)} | "
      f"{_flops(r.xla_flops)} | {_ratio(r.ratio.xla_flops)} | "
      f"{1e3 * r.step_seconds.median:.2f} ms | {_ratio(r.ratio.step_seconds, 2)} | "
      f"{_ci(r.test_accuracy)} | {'–' if d is None else _ci(d, signed=True)} | "
      f"{'reference' if d is None else RESOLVED[d.resolved]} |"
    )
  res = table.resolution
  if res.half is not None:
    lines += [
      "",
      f"With {seeds} seeds and the spread seen here (the median standard deviation of the paired "
      f"differences), a difference smaller than ±{100 * res.half:.2f} points is not resolved, "
      f"and a true difference of {100 * res.detectable:.2f} points is resolved with "
      f"{100 * res.power:.0f}% probability.",
    ]
  return "\n".join(lines) + "\n"


def document(results: Results) -> str:
  """`results.md`: every table, then where and how it was measured."""
  env = results.environment
  parts = [markdown(t, len(results.seeds)) for t in results.tables]
  parts.append(
    f"Seeds {', '.join(map(str, results.seeds))}; base `{results.base}` with "
    f"{', '.join(f'`{o}`' for o in results.overrides) or 'no overrides'}. Measured "
    f"{results.date} on {env.device_count} {env.backend} device(s), "
    f"{env.cpu_cores if env.cpu_cores is not None else '?'} CPU cores, jax {env.jax}; "
    f"{results.wall_seconds / 60:.1f} min of wall time for the call that trained "
    f"{results.trained_runs} of the runs.\n"
  )
  return "\n".join(parts)


CSV_FIELDS = (
  "table", "variant", "seeds", "params", "params_ratio", "train_step_flops",
  "train_step_flops_ratio", "xla_flops", "xla_flops_ratio", "step_seconds_median",
  "step_seconds_ratio", "test_accuracy_mean", "test_accuracy_low", "test_accuracy_high",
  "difference_mean", "difference_low", "difference_high", "resolved",
)  # fmt: skip


def csv_text(results: Results) -> str:
  """`results.csv`: one row per variant and table, fractions and seconds as in the JSON."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for t in results.tables:
    for r in t.rows:
      a, d = r.test_accuracy, r.difference
      writer.writerow(
        {
          "table": t.name,
          "variant": r.label,
          "seeds": a.n,
          "params": r.params,
          "params_ratio": r.ratio.params,
          "train_step_flops": r.train_step_flops,
          "train_step_flops_ratio": r.ratio.train_step_flops,
          "xla_flops": r.xla_flops,
          "xla_flops_ratio": r.ratio.xla_flops,
          "step_seconds_median": r.step_seconds.median,
          "step_seconds_ratio": r.ratio.step_seconds,
          "test_accuracy_mean": a.mean,
          "test_accuracy_low": a.low,
          "test_accuracy_high": a.high,
          "difference_mean": None if d is None else d.mean,
          "difference_low": None if d is None else d.low,
          "difference_high": None if d is None else d.high,
          "resolved": None if d is None else d.resolved,
        }
      )
  return buffer.getvalue()
