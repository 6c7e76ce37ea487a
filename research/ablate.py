"""Ablations: variants of a base experiment trained over several seeds, beside what each costs.

An ablation config (`experiments/ablations.py`) names a base experiment, the seeds, and tables of
variants; a variant is a label and config overrides on the base (`model.block=factorized`). For every
variant and seed the base trains in `<out>/runs/<table>/<variant>/seed_<s>` (a run that finished with the
same config is read back, not rerun; an interrupted one resumes from its checkpoint); then the variants'
train steps (`research.cost.train_step_call`) are timed with the one harness, taking turns
(`research.timing.measure_interleaved`). Each table row reports
  test accuracy   final-epoch mean, sample standard deviation, min and max over the seeds
  params          trainable parameters
  FLOPs           analytic FLOPs of one train step at the base batch size (research.flops)
  step time       median seconds of one jitted train step (after warm-up, >= 5 repetitions)
with the cost ratios to the table's reference variant in adjacent columns. `run` writes
`<out>/ablations.json`, one Markdown table `<out>/<table>.md` and one plot `<out>/<table>.png` per table.
Accuracies are deterministic (same config and seeds, same numbers on CPU); times are not.
"""

import contextlib
import io
import json
import os
import re
import statistics

import ml_collections
import tqdm

from research import config as config_lib, metrics
from research.errors import ConfigError, UserError

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")


def variant_config(ablation: ml_collections.ConfigDict, variant: dict, seed: int) -> ml_collections.ConfigDict:
  """The base experiment with the ablation's overrides, the variant's overrides and `seed=<seed>`."""
  path = os.path.join(EXPERIMENTS, ablation.base)
  config = config_lib.load_config(path)
  config_lib.apply_overrides(config, [*ablation.overrides, *variant["overrides"], f"seed={seed}"])
  return config


def _tables(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The tables to run, checked: every variant has a unique label and overrides, the reference exists."""
  ablation = config.ablation
  if not ablation.seeds or any(not isinstance(s, int) or s < 0 for s in ablation.seeds):
    raise ConfigError("ablation.seeds", f"must be one or more non-negative ints, got {ablation.seeds!r}")
  tables = []
  for name in ablation.tables:
    if name not in ablation:
      raise ConfigError("ablation.tables", f"names table {name!r}, which is not a section of ablation")
    table = ablation[name]
    labels = [v.get("label") for v in table.variants]
    if not labels or len(set(labels)) != len(labels) or not all(isinstance(v, str) for v in labels):
      raise ConfigError(f"ablation.{name}.variants", "needs one or more variants with unique string labels")
    if table.reference not in labels:
      raise ConfigError(f"ablation.{name}.reference", f"{table.reference!r} is not one of the labels {labels}")
    tables.append((name, table))
  return tables


def check(config: ml_collections.ConfigDict) -> None:
  """Builds every run's config and model before anything trains: a bad variant fails first, naming itself."""
  from research import data  # pylint: disable=g-import-not-at-top
  from research.models import build_model  # pylint: disable=g-import-not-at-top
  for name, table in _tables(config):
    for variant in table.variants:
      try:
        run_config = variant_config(config.ablation, variant, config.ablation.seeds[0])
        config_lib.validate(run_config)
        dataset = data.info(run_config)
        build_model(run_config.model, dataset.num_classes, dataset.shape)
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


def _summary(values: list[float]) -> dict:
  return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "min": min(values), "max": max(values), "n": len(values), "values": values}


def _ratio(a: float, b: float) -> float | None:
  return a / b if b else None


def run_table(config: ml_collections.ConfigDict, name: str, table: ml_collections.ConfigDict, out: str,
              bar: tqdm.tqdm) -> dict:
  """Trains every variant of one table over the seeds, then times their train steps taking turns
  (`timing.measure_interleaved`, so load on a shared machine falls on all alike); returns the rows."""
  from research import cost, timing, train  # pylint: disable=g-import-not-at-top
  rows, calls = [], {}
  for variant in table.variants:
    accuracies = []
    for seed in config.ablation.seeds:
      run_config = variant_config(config.ablation, variant, seed)
      workdir = os.path.join(out, "runs", name, _slug(variant["label"]), f"seed_{seed}")
      bar.set_postfix_str(f"{name}: {variant['label']}, seed {seed}")
      record = _finished(run_config, workdir)
      if record is None:
        with contextlib.redirect_stdout(io.StringIO()):
          record = train.train_and_evaluate(run_config, workdir)
      accuracies.append(record["test_accuracy"])
      bar.update()
    call = cost.train_step_call(variant_config(config.ablation, variant, config.ablation.seeds[0]))
    calls[variant["label"]] = (call.fn, call.args)
    rows.append({"label": variant["label"], "overrides": list(variant["overrides"]),
                 "test_accuracy": _summary(accuracies), "params": call.params,
                 "train_step_flops": call.train_step_flops})
  bar.set_postfix_str(f"{name}: timing the train steps")
  seconds = timing.measure_interleaved(calls, warmup=config.ablation.warmup, repeats=config.ablation.repeats)
  for row in rows:
    row["step_seconds"] = seconds[row["label"]].to_dict()
  reference = next(r for r in rows if r["label"] == table.reference)
  for row in rows:
    row["ratio"] = {"params": _ratio(row["params"], reference["params"]),
                    "train_step_flops": _ratio(row["train_step_flops"], reference["train_step_flops"]),
                    "step_seconds": _ratio(row["step_seconds"]["median"], reference["step_seconds"]["median"])}
  return {"name": name, "title": table.title, "reference": table.reference, "rows": rows}


def markdown(table: dict, seeds: int) -> str:
  """One table as Markdown: cost and its ratio to the reference side by side, then accuracy over the seeds."""
  lines = [f"**{table['title']}** (ratios to {table['reference']}; accuracy over {seeds} seeds)", "",
           "| variant | params | ratio | train-step FLOPs | ratio | step time (median) | ratio | "
           "test accuracy (mean ± std) | min – max |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in table["rows"]:
    acc = r["test_accuracy"]
    lines.append(f"| {r['label']} | {r['params']:,} | {r['ratio']['params']:.3f} | {r['train_step_flops'] / 1e6:,.1f} M | "
                 f"{r['ratio']['train_step_flops']:.3f} | {1e3 * r['step_seconds']['median']:.2f} ms | "
                 f"{r['ratio']['step_seconds']:.2f} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % | "
                 f"{100 * acc['min']:.2f} – {100 * acc['max']:.2f} % |")
  return "\n".join(lines) + "\n"


def plot(table: dict, path: str) -> None:
  """Accuracy (mean ± std over seeds) against train-step FLOPs and against measured step time."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 4), layout="constrained")
  for ax, key, xlabel, scale in zip(fig.subplots(1, 2), ("train_step_flops", "step_seconds"),
                                    ("train-step FLOPs (analytic, millions)", "train-step time (median, ms)"),
                                    (1e-6, 1e3)):
    for r in table["rows"]:
      x = (r[key]["median"] if key == "step_seconds" else r[key]) * scale
      acc = r["test_accuracy"]
      ax.errorbar(x, 100 * acc["mean"], yerr=100 * acc["std"], fmt="o", capsize=4)
      ax.annotate(r["label"], (x, 100 * acc["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  fig.suptitle(table["title"])
  fig.savefig(path, dpi=120)


def run(config: ml_collections.ConfigDict, out: str) -> dict:
  """Runs every table of `config.ablation`; writes JSON, Markdown and PNG into `out`; returns the report."""
  from research import cost  # pylint: disable=g-import-not-at-top
  check(config)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the ablation output folder {out!r}: {e.strerror}") from None
  tables = _tables(config)
  seeds = config.ablation.seeds
  total = sum(len(t.variants) for _, t in tables) * len(seeds)
  report = {"schema": "convlab.ablation/1", "environment": cost._environment(),  # pylint: disable=protected-access
            "base": config.ablation.base, "overrides": list(config.ablation.overrides), "seeds": list(seeds),
            "tables": []}
  with tqdm.tqdm(total=total, desc="ablation runs", unit="run", dynamic_ncols=True) as bar:
    for name, table in tables:
      result = run_table(config, name, table, out, bar)
      report["tables"].append(result)
      with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(markdown(result, len(seeds)))
      plot(result, os.path.join(out, f"{name}.png"))
  with open(os.path.join(out, "ablations.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def describe(report: dict, out: str) -> str:
  """The report's tables as text, and where the files went."""
  parts = [markdown(t, len(report["seeds"])) for t in report["tables"]]
  files = ", ".join(f"{t['name']}.md/.png" for t in report["tables"])
  return "\n".join(parts) + f"\nResults in {out} (ablations.json, {files}, runs/)."
