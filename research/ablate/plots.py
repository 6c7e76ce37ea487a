"""An ablation's plots, one set per table: `<table>.png` (accuracy with its confidence interval
against each cost that tells the variants apart), `<table>_differences.png` (each variant's paired
difference from the reference, a forest plot) and `<table>_grad_norms.png` (the gradient norm of
every layer, where the runs logged it).

Each `*_figure` function returns a matplotlib `Figure`; `save` writes one as PNG.
"""

from research.ablate.results import Table
from research.ablate.stats import Interval

MARKERS = "osD^v<>pXh*"
AXES = {  # The costs accuracy is plotted against: (axis label, a row's value on the axis).
  "train_step_flops": ("train-step FLOPs (analytic, millions)", lambda r: r.train_step_flops / 1e6),
  "step_seconds": ("train-step time (median, ms)", lambda r: 1e3 * r.step_seconds.median),
}


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # Imported only where a plot is drawn: it is slow.

  return Figure(figsize=(width, height), layout="constrained")


def save(fig, path: str) -> None:
  """Writes `fig` as a PNG at `path`, without the software's name (the same bytes each time)."""
  fig.savefig(path, dpi=110, metadata={"Software": None})


def _legend_and_title(fig, axes, title: str) -> None:
  axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  fig.suptitle(title, fontsize=10)


def error_bar(summary: Interval) -> list[list[float]]:
  """An error bar, in points below and above the mean: `[mean - low, high - mean]`. The interval
  may be clipped at a bound (`ablate.stats`), so the two sides need not be equal."""
  if summary.half is None:
    return [[0.0], [0.0]]
  return [[100 * (summary.mean - summary.low)], [100 * (summary.high - summary.mean)]]


def accuracy_panels(table: Table) -> list[str]:
  """The costs of `AXES` that get a panel in `<table>.png`: the analytic FLOPs where they tell the
  variants apart, and the measured time always. Variants that differ only where the FLOP count
  does not look (the activation) share one count, which would put every point on one vertical
  line: that panel is left out and the title states the count."""
  flops = {r.train_step_flops for r in table.rows}
  return (["train_step_flops"] if len(flops) > 1 else []) + ["step_seconds"]


def accuracy_figure(table: Table):
  """Accuracy (mean and 95% CI over seeds) against each cost of `accuracy_panels`, one panel
  each; a legend names the variants (no labels on the points to overlap)."""
  panels = accuracy_panels(table)
  fig = _figure(5.5 * len(panels) + 2, 4.2)
  axes = list(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
  for ax, key in zip(axes, panels):
    label, value = AXES[key]
    for i, r in enumerate(table.rows):
      ax.errorbar(
        value(r), 100 * r.test_accuracy.mean, yerr=error_bar(r.test_accuracy),
        fmt=MARKERS[i % len(MARKERS)], capsize=4, label=r.label,
      )  # fmt: skip
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%), mean and 95% CI")
  title = table.title
  if "train_step_flops" not in panels:
    title += f"\n(every variant: {table.rows[0].train_step_flops / 1e6:,.1f} M train-step FLOPs)"
  _legend_and_title(fig, axes, title)
  return fig


def differences_figure(table: Table):
  """A forest plot: each variant's paired difference from the reference (points of accuracy) with
  its 95% CI, the zero line, resolved differences filled."""
  rows = [r for r in table.rows if r.difference is not None]
  fig = _figure(7, 0.5 * len(rows) + 1.6)
  ax = fig.subplots()
  for i, r in enumerate(rows):
    d = r.difference
    ax.errorbar(
      100 * d.mean, i, xerr=error_bar(d), fmt="o", capsize=4, color="black",
      markerfacecolor="black" if d.resolved else "white",
    )  # fmt: skip
  ax.axvline(0, color="gray", linestyle="--", linewidth=1)
  ax.set_yticks(range(len(rows)), [r.label for r in rows])
  ax.invert_yaxis()
  ax.set_xlabel(f"test accuracy minus {table.reference}'s (points), paired by seed, 95% CI")
  ax.grid(alpha=0.3, axis="x")
  ax.set_title(f"{table.title}\n(filled: the interval excludes 0)", fontsize=9)
  return fig


def grad_norms_figure(table: Table):
  """The gradient norm of every layer (log scale, the mean over seeds) after the first epoch and
  after the last, one line per variant; None (nothing to draw) if the runs logged none."""
  rows = [r for r in table.rows if r.grad_norms]
  if not rows:
    return None
  fig = _figure(11, 4.2)
  axes = fig.subplots(1, 2, sharey=True)
  layers = list(rows[0].grad_norms)
  epochs = len(rows[0].grad_norms[layers[0]])
  for ax, epoch, name in zip(axes, (0, epochs - 1), ("first", "last")):
    for i, r in enumerate(rows):
      norms = [r.grad_norms[layer][epoch] for layer in r.grad_norms]
      floor = [max(n, 1e-12) for n in norms]  # A log axis has no zero.
      ax.plot(range(1, len(norms) + 1), floor, marker=MARKERS[i % len(MARKERS)], label=r.label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (input to output)")
    ax.set_title(f"after the {name} epoch (epoch {epoch + 1})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("gradient norm of the layer's parameters")
  _legend_and_title(fig, axes, table.title)
  return fig
