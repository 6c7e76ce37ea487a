"""An ablation's files as a reader sees them, rendered from its results alone (`render`):
`results.json` (`ablate.results`), `results.md` and `results.csv` (`ablate.tables`), and each
table's plots (`ablate.plots`); `describe` is what `run.py ablate` and `run.py report` print.
"""

import os

from research.ablate import plots, tables
from research.ablate.results import RESULTS, Results, to_json


def _write(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all (a temporary file, renamed)."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def render(results: Results, out: str) -> list[str]:
  """Writes `results.json`, `results.csv`, `results.md` and each table's plots into `out`;
  returns the files' names."""
  texts = {
    RESULTS: to_json(results),
    "results.csv": tables.csv_text(results),
    "results.md": tables.document(results),
  }
  for name, text in texts.items():
    _write(os.path.join(out, name), text)
  written = list(texts)
  for table in results.tables:
    figures = {
      f"{table.name}.png": plots.accuracy_figure(table),
      f"{table.name}_differences.png": plots.differences_figure(table),
      f"{table.name}_grad_norms.png": plots.grad_norms_figure(table),
    }
    for name, fig in figures.items():
      if fig is not None:  # No gradient norms logged: no plot of them.
        plots.save(fig, os.path.join(out, name))
        written.append(name)
  return written


def describe(results: Results, out: str, written: list[str]) -> str:
  """The tables as text, and where the files went."""
  return (
    "\n".join(tables.markdown(t, len(results.seeds)) for t in results.tables)
    + f"\nResults in {out}: {', '.join(written)}, runs/."
  )
