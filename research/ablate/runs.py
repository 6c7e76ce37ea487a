"""The runs of an ablation: every (table, variant, seed) with its resolved config, where it trains,
and what the ablation does with it (`plan`).

A run's config is the base experiment with the ablation's overrides, the variant's and the seed
(`variant_config`). Runs are matched by that config, the `distributed` keys aside (where a run ran
is not what it is), never by code:
- `read`: its folder holds a run that finished with this config; it is read back, not rerun.
- `link`: an earlier run of the ablation has the same config (the smoke ablation's `blocks/3x3` and
  `activations/relu`); it trains once, and this run's folder becomes a symbolic link to the first
  one's, so its records, rows and statistics are the first one's, read from the same files.
- `train`: anything else; it trains (resuming from its checkpoint if it was interrupted). A run
  never trains through a link: a stale link is removed first.
A later run whose folder is a directory of its own (trained before it was a duplicate) is read
back or resumed there, never replaced.
"""

import dataclasses
import json
import os

import ml_collections

from research import config as config_lib
from research.ablate.results import run_dir
from research.config import is_int
from research.errors import ConfigError
from research.training import metrics

# experiments/ beside research/: ablation files name their base experiment relative to it.
EXPERIMENTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
)
WHERE = "distributed"  # The config section that says where a run ran, not what it is.


def variant_config(
  ablation: ml_collections.ConfigDict, table: ml_collections.ConfigDict, variant: dict, seed: int
) -> ml_collections.ConfigDict:
  """The base experiment (the table's `base` where it names one, else the ablation's) with the
  ablation's overrides, the variant's overrides and `seed=<seed>`."""
  path = os.path.join(EXPERIMENTS, table.get("base", ablation.base))
  config = config_lib.load_config(path)
  config_lib.apply_overrides(config, [*ablation.overrides, *variant["overrides"], f"seed={seed}"])
  return config


def tables(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """The tables to run, checked: every variant has a unique label and overrides, the reference
  exists, the seeds are non-negative ints."""
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


def identity(saved: dict) -> str:
  """What a run is, from its resolved config as JSON (`config.json`): every key but `WHERE`."""
  return json.dumps({k: v for k, v in saved.items() if k != WHERE}, sort_keys=True)


def finished(run_config: ml_collections.ConfigDict, workdir: str) -> list[dict] | None:
  """The records of a run in `workdir` that finished with this config, else None."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(saved, dict):
    return None
  same = identity(saved) == identity(json.loads(config_lib.to_json(run_config)))
  records = metrics.read(workdir) if same else []
  if records and records[-1]["epoch"] == run_config.train.num_epochs:
    return records
  return None


@dataclasses.dataclass(frozen=True)
class Run:
  """One seed of one variant: `action` is `read`, `link` or `train` (the module docstring)."""

  table: str
  label: str
  seed: int
  workdir: str
  config: ml_collections.ConfigDict
  action: str
  same_as: str | None  # The workdir of the first run of the ablation with this config, if earlier.


def plan(config: ml_collections.ConfigDict, out: str) -> list[Run]:
  """Every run of the ablation `config` with its results under `out`, in the order they run
  (tables, then variants, then seeds), each with its action. Reads the runs' folders, writes
  nothing."""
  first: dict[str, str] = {}
  found = []
  for name, table in tables(config):
    for variant in table.variants:
      for seed in config.ablation.seeds:
        run_config = variant_config(config.ablation, table, variant, seed)
        workdir = run_dir(out, name, variant["label"], seed)
        same_as = first.setdefault(identity(json.loads(config_lib.to_json(run_config))), workdir)
        same_as = None if same_as == workdir else same_as
        own = os.path.isdir(workdir) and not os.path.islink(workdir)
        if finished(run_config, workdir) is not None:
          action = "read"
        elif same_as is not None and not own:
          action = "link"
        else:
          action = "train"
        found.append(Run(name, variant["label"], seed, workdir, run_config, action, same_as))
  return found


def link(run: Run) -> None:
  """Makes `run.workdir` a symbolic link to `run.same_as` (relative, so that the ablation's
  folder can move), replacing a link that is there."""
  os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
  target = os.path.relpath(run.same_as, os.path.dirname(run.workdir))
  if os.path.lexists(run.workdir + ".tmp"):  # Left by a call that stopped here.
    os.unlink(run.workdir + ".tmp")
  os.symlink(target, run.workdir + ".tmp")
  os.replace(run.workdir + ".tmp", run.workdir)


def unlink_stale(run: Run) -> None:
  """Removes `run.workdir` if it is a link (to another run), so that `run` trains in a folder of
  its own."""
  if os.path.islink(run.workdir):
    os.unlink(run.workdir)
