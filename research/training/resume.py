"""Where a run starts: its workdir checked, then the newest checkpoint that is valid, restores and
may continue under this config, or the initial state.

`resume(config, plan, workdir)` promises, before anything is trained or written:
- unfinished saves a killed run left are removed (they never became checkpoints);
- corrupt newer steps are quarantined (`training.integrity`), and the newest valid one is used;
- a checkpoint of another data position (the dataset changed size) or beyond the run's last step
  is refused, naming the key or the workdir;
- config changes the checkpoint cannot continue under (`FIXED_KEYS`) are refused; allowed ones are
  logged and appended to `<workdir>/config_changes.jsonl`.

Over several processes, process 0 alone cleans up and picks the step, and broadcasts it; every
process then restores that step (Orbax restores collectively, so all must read the same one).
"""

import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from research import config as config_lib
from research.errors import CheckpointError, ConfigError, UserError
from research.training import checkpoint, distributed, integrity
from research.training.plan import Plan
from research.training.state import TrainState
from research.trees import flatten

log = logging.getLogger(__name__)

CONFIG_CHANGES_FILE = "config_changes.jsonl"
# Config keys that a checkpoint's state or data position depends on: a resumed run may not change
# them. Other optimizer keys can change the optimizer state's structure (sgd momentum on or off),
# so all but one count.
FIXED_KEYS = ("seed", "data.name", "data.batch_size", "model", "optimizer")
FREE_KEYS = ("optimizer.learning_rate",)
PICK_FAILED = -2  # What process 0 broadcasts when it could not pick a step (it raises the reason).


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and returns it absolute; one that cannot be written is a
  `UserError` naming it (checked by process 0, `distributed.writer_first`)."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    if not distributed.is_writer():
      return workdir
    probe = os.path.join(workdir, ".write-test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(
      f"workdir {workdir} is not writable ({e.strerror}); choose another with --workdir"
    ) from None
  return workdir


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, current value)} for every key that differs between two configs as
  JSON dicts; a key missing on one side has the value `"<absent>"` there."""
  old, new = flatten(saved, "."), flatten(current, ".")
  return {
    key: (old.get(key, "<absent>"), new.get(key, "<absent>"))
    for key in sorted(set(old) | set(new))
    if old.get(key, "<absent>") != new.get(key, "<absent>")
  }


def check_resumable(changes: dict[str, tuple[Any, Any]], path: str) -> None:
  """Refuses (`CheckpointError`) config changes that the checkpoint at `path` cannot continue
  under."""

  def fixed(key):
    return key not in FREE_KEYS and any(key == k or key.startswith(k + ".") for k in FIXED_KEYS)

  refused = {k: v for k, v in changes.items() if fixed(k)}
  if refused:
    listed = ", ".join(f"config.{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
    raise CheckpointError(
      f"checkpoint {path} was made with another model, optimizer or data order than this "
      f"config asks for: {listed}. Resume with the values it was made with, or train into a "
      "new --workdir."
    )


def _record_changes(config: ml_collections.ConfigDict, workdir: str, step: int, meta: dict) -> None:
  """Refuses the changes since checkpoint `step` that it cannot continue under (in every process);
  records the allowed ones (process 0)."""
  changes = config_changes(meta["config"], json.loads(config_lib.to_json(config)))
  check_resumable(changes, os.path.join(checkpoint.directory(workdir), str(step)))
  if changes and distributed.is_writer():
    log.info(
      f"Config changes since step {step} (allowed; recorded in {CONFIG_CHANGES_FILE}): "
      + ", ".join(f"config.{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
      + "."
    )
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
      f.write(
        json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}}) + "\n"
      )


def resume(
  config: ml_collections.ConfigDict, plan: Plan, workdir: str
) -> tuple[TrainState, dict | None]:
  """(state, checkpoint meta) to continue from, or the initial state of `config.seed` and None."""
  spe = plan.steps_per_epoch

  def check(step: int, meta: dict) -> None:
    if meta["steps_per_epoch"] != spe:  # The data position would mean other examples.
      raise CheckpointError(
        f"checkpoint {step} in {checkpoint.directory(workdir)} was saved with "
        f"{meta['steps_per_epoch']} steps per epoch and this run has {spe}: the dataset "
        "changed size; train into a new --workdir"
      )
    if step > plan.total_steps:  # It would train nothing and misdescribe the run in config.json.
      raise ConfigError(
        "train.num_epochs",
        f"{plan.num_epochs} epochs ({plan.total_steps} steps) is fewer than the run in "
        f"{workdir} has done (its checkpoint is at step {step}, epoch {step / spe:g}); ask for "
        f"at least {math.ceil(step / spe)}, or train into a new --workdir",
      )
    _record_changes(config, workdir, step, meta)

  target = plan.abstract_state()
  if distributed.several():
    found = _resume_together(workdir, target, check)
  else:
    _remove_unfinished(workdir)
    found = checkpoint.restore_newest(workdir, target, check_meta=check)
  if found is None:
    return plan.initial_state(config.seed), None
  step, state, meta = found
  position = f", step {step % spe} of {spe}" if step % spe else ""
  log.info(
    f"Resuming from the checkpoint at step {step} (epoch {step // spe}{position}) in "
    f"{checkpoint.directory(workdir)}."
  )
  return state, meta


def _remove_unfinished(workdir: str) -> None:
  removed = integrity.remove_unfinished(workdir)
  if removed:
    log.info(
      f"Removed {len(removed)} unfinished save(s) that an interrupted run left in "
      f"{checkpoint.directory(workdir)}: {', '.join(removed)}."
    )


def _resume_together(
  workdir: str, target: Any, check: Callable[[int, dict], None]
) -> tuple[int, TrainState, dict] | None:
  """`checkpoint.restore_newest` over several processes. A step that passes its checksums and
  still does not restore is an error here, not a fallback to an older one."""
  if distributed.is_writer():
    try:
      _remove_unfinished(workdir)
      step = integrity.latest_valid(workdir, quarantine=True)
    except UserError:
      distributed.broadcast(PICK_FAILED)  # The others stop too instead of waiting.
      raise
    step = distributed.broadcast(-1 if step is None else step)
  else:
    step = distributed.broadcast(0)
  if step == PICK_FAILED:
    raise CheckpointError(
      f"process 0 found no checkpoint to resume from in {checkpoint.directory(workdir)}; "
      "its output says why"
    )
  if step < 0:
    return None
  meta = checkpoint.read_meta(workdir, step)
  check(step, meta)
  state, meta = checkpoint.restore(workdir, step, target)
  return step, state, meta
