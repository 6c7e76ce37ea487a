"""An ablation's results as a reader sees them: summaries over seeds, Markdown tables and plots."""

import statistics


def summary(values: list[float]) -> dict:
  return {
    "mean": statistics.fmean(values),
    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    "min": min(values),
    "max": max(values),
    "n": len(values),
    "values": values,
  }


def markdown(table: dict, seeds: int) -> str:
  """One table as Markdown: cost and its ratio to the reference side by side,
  then accuracy over the seeds."""
  lines = [
    f"**{table['title']}** (ratios to {table['reference']}; accuracy over {seeds} seeds)",
    "",
    "| variant | params | ratio | train-step FLOPs | ratio | step time (median) | ratio | "
    "test accuracy (mean ± std) | min – max |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in table["rows"]:
    acc = r["test_accuracy"]
    lines.append(
      f"| {r['label']} | {r['params']:,} | {r['ratio']['params']:.3f} | "
      f"{r['train_step_flops'] / 1e6:,.1f} M | "
      f"{r['ratio']['train_step_flops']:.3f} | {1e3 * r['step_seconds']['median']:.2f} ms | "
      f"{r['ratio']['step_seconds']:.2f} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % | "
      f"{100 * acc['min']:.2f} – {100 * acc['max']:.2f} % |"
    )
  return "\n".join(lines) + "\n"


def plot(table: dict, path: str) -> None:
  """Accuracy (mean ± std over seeds) against train-step FLOPs and against measured step time."""
  from matplotlib.figure import (
    Figure,  # Only where a plot is drawn: matplotlib takes 0.5 s to import.
  )

  fig = Figure(figsize=(10, 4), layout="constrained")
  for ax, key, xlabel, scale in zip(
    fig.subplots(1, 2),
    ("train_step_flops", "step_seconds"),
    ("train-step FLOPs (analytic, millions)", "train-step time (median, ms)"),
    (1e-6, 1e3),
  ):
    for r in table["rows"]:
      x = (r[key]["median"] if key == "step_seconds" else r[key]) * scale
      acc = r["test_accuracy"]
      ax.errorbar(x, 100 * acc["mean"], yerr=100 * acc["std"], fmt="o", capsize=4)
      ax.annotate(
        r["label"], (x, 100 * acc["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8
      )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  fig.suptitle(table["title"])
  fig.savefig(path, dpi=120)


def describe(report: dict, out: str) -> str:
  """The report's tables as text, and where the files went."""
  parts = [markdown(t, len(report["seeds"])) for t in report["tables"]]
  files = ", ".join(f"{t['name']}.md/.png" for t in report["tables"])
  return "\n".join(parts) + f"\nResults in {out} (ablations.json, {files}, runs/)."
