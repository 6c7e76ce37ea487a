"""An ablation's results as a reader sees them, rendered from its results alone (`render`): the
tables (`results.md`, `results.csv`, `results.json`) and the plots (`<table>.png`: accuracy with its
confidence interval against FLOPs and against measured time; `<table>_differences.png`: each
variant's paired difference from the reference, a forest plot; `<table>_grad_norms.png`: the
gradient norm of every layer, where the runs logged it).

`refresh` re-reads what the saved runs hold (each seed's final accuracy and logged gradient norms)
into the results, so that `run.py report` renders everything again without training.

Accuracies are fractions in the results and percentages (differences: percentage points) in the
tables and plots; times are seconds in the results and milliseconds in the tables.
"""

import csv
import io
import json
import os
import re
import statistics

from research.ablate import stats
from research.errors import UserError
from research.training import metrics

RESULTS = "results.json"
GRAD_NORM = "grad_norm/"  # Prefix of the per-layer gradient norms in a run's metrics.jsonl.


def run_dir(out: str, table: str, label: str, seed: int) -> str:
  """Where seed `seed` of variant `label` of table `table` trains: `<out>/runs/<table>/<label>/
  seed_<seed>` (the label made a safe folder name)."""
  slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")
  return os.path.join(out, "runs", table, slug, f"seed_{seed}")


def _records(out: str, table: str, label: str, seed: int) -> list[dict]:
  workdir = run_dir(out, table, label, seed)
  records = metrics.read(workdir) if os.path.isdir(workdir) else []
  if not records:
    raise UserError(
      f"the ablation in {out} has no finished run for table {table!r}, variant {label!r}, seed "
      f"{seed} ({workdir}); run `python run.py ablate` with its config to train it"
    )
  return records


def grad_norms(records: list[dict]) -> dict[str, list[float]] | None:
  """`{layer: [norm at the end of each epoch]}` from a run's records, None if it logged none."""
  layers = [k[len(GRAD_NORM) :] for k in records[-1] if k.startswith(GRAD_NORM)]
  if not layers:
    return None
  return {layer: [r[GRAD_NORM + layer] for r in records] for layer in layers}


def summarize(table: dict, seeds: list[int], per_seed: dict[str, dict[int, list[dict]]]) -> None:
  """Fills each row of `table` from its runs' records by seed (`per_seed[label][seed]`):
  `test_accuracy` (`stats.interval`), `difference` from the reference (`stats.paired`, by seed; None
  for the reference), `grad_norms` (each layer's norm per epoch, the mean over seeds) and the
  table's `resolution` (`stats.resolvable`, from the median spread of the paired differences)."""
  reference = [per_seed[table["reference"]][s][-1]["test_accuracy"] for s in seeds]
  spreads = []
  for row in table["rows"]:
    runs = per_seed[row["label"]]
    accuracies = [runs[s][-1]["test_accuracy"] for s in seeds]
    row["test_accuracy"] = stats.interval(accuracies)
    row["difference"] = (
      None if row["label"] == table["reference"] else stats.paired(accuracies, reference)
    )
    if row["difference"] is not None and row["difference"]["std"] is not None:
      spreads.append(row["difference"]["std"])
    norms = [grad_norms(runs[s]) for s in seeds]
    row["grad_norms"] = (
      None
      if any(n is None for n in norms)
      else {
        layer: [statistics.fmean(n[layer][e] for n in norms) for e in range(len(norms[0][layer]))]
        for layer in norms[0]
      }
    )
  table["resolution"] = stats.resolvable(
    statistics.median(spreads) if spreads else None, len(seeds)
  )


def refresh(results: dict, out: str) -> dict:
  """`results` with every table summarized again from the saved runs under `out` (a missing run
  is a `UserError` naming it)."""
  seeds = results["seeds"]
  for table in results["tables"]:
    per_seed = {
      row["label"]: {s: _records(out, table["name"], row["label"], s) for s in seeds}
      for row in table["rows"]
    }
    summarize(table, seeds, per_seed)
  return results


def load(out: str) -> dict:
  """The results an ablation wrote into `out` (a missing or unreadable file is a `UserError`)."""
  path = os.path.join(out, RESULTS)
  try:
    with open(path) as f:
      results = json.load(f)
  except FileNotFoundError:
    raise UserError(
      f"{path} does not exist: no ablation has finished in {out}; run `python run.py ablate "
      f"--out={out}` first"
    ) from None
  except (OSError, ValueError) as e:
    raise UserError(
      f"{path} cannot be read ({type(e).__name__}: {e}); run the ablation again"
    ) from None
  if results.get("schema") != "convlab.ablation/2":
    raise UserError(
      f"{path} has schema {results.get('schema')!r}, not 'convlab.ablation/2'; run the ablation "
      "again to rewrite it"
    )
  return results


# ---------------------------------------------------------------------------------------------
# Text.


def _pct(x: float | None, signed: bool = False) -> str:
  if x is None:
    return "–"
  return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _ci(summary: dict, signed: bool = False) -> str:
  """`mean [low, high]` in percent (percentage points if `signed`)."""
  if summary["half"] is None:
    return _pct(summary["mean"], signed)
  return (
    f"{_pct(summary['mean'], signed)} [{_pct(summary['low'], signed)}, "
    f"{_pct(summary['high'], signed)}]"
  )


def _flops(x: float | None) -> str:
  return "–" if x is None else f"{x / 1e6:,.1f} M"


def _ratio(x: float | None, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def markdown(table: dict, seeds: int) -> str:
  """One table as Markdown: cost and its ratio to the reference side by side, then accuracy with
  its 95% interval, and the paired difference from the reference with its interval and whether it
  is resolved; then a line on what the design can resolve."""
  lines = [
    f"**{table['title']}** (ratios and differences against {table['reference']}; {seeds} seeds, "
    "paired by seed; 95% Student-t intervals)",
    "",
    "| variant | params | ratio | train-step FLOPs | ratio | XLA FLOPs | ratio | step time | "
    "ratio | test accuracy % [95% CI] | difference, points [95% CI] | resolved |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
  ]
  for r in table["rows"]:
    d = r["difference"]
    resolved = "reference" if d is None else {True: "yes", False: "no", None: "–"}[d["resolved"]]
    lines.append(
      f"| {r['label']} | {r['params']:,} | {_ratio(r['ratio']['params'])} | "
      f"{_flops(r['train_step_flops'])} | {_ratio(r['ratio']['train_step_flops'])} | "
      f"{_flops(r['xla_flops'])} | {_ratio(r['ratio']['xla_flops'])} | "
      f"{1e3 * r['step_seconds']['median']:.2f} ms | {_ratio(r['ratio']['step_seconds'], 2)} | "
      f"{_ci(r['test_accuracy'])} | {'–' if d is None else _ci(d, signed=True)} | {resolved} |"
    )
  res = table["resolution"]
  if res["half"] is not None:
    lines += [
      "",
      f"With {seeds} seeds and the spread seen here (the median standard deviation of the paired "
      f"differences), a difference smaller than ±{100 * res['half']:.2f} points is not resolved, "
      f"and a true difference of {100 * res['detectable']:.2f} points is resolved with "
      f"{100 * res['power']:.0f}% probability.",
    ]
  return "\n".join(lines) + "\n"


def document(results: dict) -> str:
  """`results.md`: every table, then where and how it was measured."""
  env = results["environment"]
  parts = [markdown(t, len(results["seeds"])) for t in results["tables"]]
  parts.append(
    f"Seeds {', '.join(map(str, results['seeds']))}; base `{results['base']}` with "
    f"{', '.join(f'`{o}`' for o in results['overrides']) or 'no overrides'}. Measured "
    f"{results['date']} on {env.get('device_count', '?')} {env.get('backend', '?')} device(s), "
    f"{env.get('cpu_cores', '?')} CPU cores, jax {env.get('jax', '?')}; "
    f"{results['wall_seconds'] / 60:.1f} min of wall time for the call that trained "
    f"{results['trained_runs']} of the runs.\n"
  )
  return "\n".join(parts)


CSV_FIELDS = (
  "table", "variant", "seeds", "params", "params_ratio", "train_step_flops",
  "train_step_flops_ratio", "xla_flops", "xla_flops_ratio", "step_seconds_median",
  "step_seconds_ratio", "test_accuracy_mean", "test_accuracy_low", "test_accuracy_high",
  "difference_mean", "difference_low", "difference_high", "resolved",
)  # fmt: skip


def csv_text(results: dict) -> str:
  """`results.csv`: one row per variant and table, fractions and seconds as in the JSON."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for t in results["tables"]:
    for r in t["rows"]:
      a, d = r["test_accuracy"], r["difference"] or {}
      writer.writerow(
        {
          "table": t["name"],
          "variant": r["label"],
          "seeds": a["n"],
          "params": r["params"],
          "params_ratio": r["ratio"]["params"],
          "train_step_flops": r["train_step_flops"],
          "train_step_flops_ratio": r["ratio"]["train_step_flops"],
          "xla_flops": r["xla_flops"],
          "xla_flops_ratio": r["ratio"]["xla_flops"],
          "step_seconds_median": r["step_seconds"]["median"],
          "step_seconds_ratio": r["ratio"]["step_seconds"],
          "test_accuracy_mean": a["mean"],
          "test_accuracy_low": a["low"],
          "test_accuracy_high": a["high"],
          "difference_mean": d.get("mean"),
          "difference_low": d.get("low"),
          "difference_high": d.get("high"),
          "resolved": d.get("resolved"),
        }
      )
  return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Plots.

MARKERS = "osD^v<>pXh*"


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # matplotlib takes 0.5 s to import: only for plots.

  return Figure(figsize=(width, height), layout="constrained")


def plot_accuracy(table: dict, path: str) -> None:
  """Accuracy (mean and 95% CI over seeds) against train-step FLOPs and against measured time; a
  legend names the variants (no labels on the points to overlap)."""
  fig = _figure(11, 4.2)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, xlabel in zip(
    axes,
    ("train_step_flops", "step_seconds"),
    ("train-step FLOPs (analytic, millions)", "train-step time (median, ms)"),
  ):
    for i, r in enumerate(table["rows"]):
      x = r[key]["median"] * 1e3 if key == "step_seconds" else r[key] / 1e6
      acc = r["test_accuracy"]
      ax.errorbar(
        x, 100 * acc["mean"], yerr=0 if acc["half"] is None else 100 * acc["half"],
        fmt=MARKERS[i % len(MARKERS)], capsize=4, label=r["label"],
      )  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%), mean and 95% CI")
  axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  fig.suptitle(table["title"], fontsize=10)
  fig.savefig(path, dpi=110, metadata={"Software": None})


def plot_differences(table: dict, path: str) -> None:
  """A forest plot: each variant's paired difference from the reference (points of accuracy) with
  its 95% CI, the zero line, resolved differences filled."""
  rows = [r for r in table["rows"] if r["difference"] is not None]
  fig = _figure(7, 0.5 * len(rows) + 1.6)
  ax = fig.subplots()
  for i, r in enumerate(rows):
    d = r["difference"]
    half = 0 if d["half"] is None else 100 * d["half"]
    ax.errorbar(
      100 * d["mean"], i, xerr=half, fmt="o", capsize=4, color="black",
      markerfacecolor="black" if d["resolved"] else "white",
    )  # fmt: skip
  ax.axvline(0, color="gray", linestyle="--", linewidth=1)
  ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
  ax.invert_yaxis()
  ax.set_xlabel(f"test accuracy minus {table['reference']}'s (points), paired by seed, 95% CI")
  ax.grid(alpha=0.3, axis="x")
  ax.set_title(f"{table['title']}\n(filled: the interval excludes 0)", fontsize=9)
  fig.savefig(path, dpi=110, metadata={"Software": None})


def plot_grad_norms(table: dict, path: str) -> bool:
  """The gradient norm of every layer (log scale, the mean over seeds) after the first epoch and
  after the last, one line per variant; False (nothing drawn) if the runs logged none."""
  rows = [r for r in table["rows"] if r["grad_norms"]]
  if not rows:
    return False
  fig = _figure(11, 4.2)
  axes = fig.subplots(1, 2, sharey=True)
  layers = list(rows[0]["grad_norms"])
  epochs = len(rows[0]["grad_norms"][layers[0]])
  for ax, epoch, name in zip(axes, (0, epochs - 1), ("first", "last")):
    for i, r in enumerate(rows):
      norms = [r["grad_norms"][layer][epoch] for layer in r["grad_norms"]]
      floor = [max(n, 1e-12) for n in norms]  # A log axis has no zero.
      ax.plot(range(1, len(norms) + 1), floor, marker=MARKERS[i % len(MARKERS)], label=r["label"])
    ax.set_yscale("log")
    ax.set_xlabel("layer (input to output)")
    ax.set_title(f"after the {name} epoch (epoch {epoch + 1})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("gradient norm of the layer's parameters")
  axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  fig.suptitle(table["title"], fontsize=10)
  fig.savefig(path, dpi=110, metadata={"Software": None})
  return True


def render(results: dict, out: str) -> list[str]:
  """Writes `results.json`, `results.csv`, `results.md` and each table's plots into `out`;
  returns the files' names."""
  written = [RESULTS, "results.csv", "results.md"]
  texts = {
    RESULTS: json.dumps(results, indent=1, allow_nan=False) + "\n",
    "results.csv": csv_text(results),
    "results.md": document(results),
  }
  for name, text in texts.items():
    with open(os.path.join(out, name + ".tmp"), "w") as f:
      f.write(text)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
  for table in results["tables"]:
    plot_accuracy(table, os.path.join(out, f"{table['name']}.png"))
    plot_differences(table, os.path.join(out, f"{table['name']}_differences.png"))
    written += [f"{table['name']}.png", f"{table['name']}_differences.png"]
    if plot_grad_norms(table, os.path.join(out, f"{table['name']}_grad_norms.png")):
      written.append(f"{table['name']}_grad_norms.png")
  return written


def describe(results: dict, out: str, written: list[str]) -> str:
  """The tables as text, and where the files went."""
  return (
    "\n".join(markdown(t, len(results["seeds"])) for t in results["tables"])
    + f"\nResults in {out}: {', '.join(written)}, runs/."
  )
