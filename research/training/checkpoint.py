"""Orbax checkpoints of a run: `<workdir>/checkpoints/<step>/`,
saved asynchronously and verified before use.

A step directory holds
- `state`: the `TrainState`: params, optimizer state, batch statistics, step and RNG key;
- `meta`: JSON: the data position (`epoch` completed, `batch_in_epoch`), the step metrics of the
  unfinished epoch, the evaluation `metrics` (at the end of an epoch) and the resolved `config`;
- `metrics`: Orbax's copy of the evaluation metrics, which it ranks to keep the best steps;
- `checksums.json`: bytes and SHA-256 of every other file. Orbax keeps no checksum; this one is
  written into Orbax's temporary directory before its atomic rename,
  so every committed step has one.

The data order is a pure function of (seed, epoch) (`data.epoch_order`), so (state, meta) is all a
resumed run needs. A step that fails verification is never trained on: it is moved to
`<workdir>/quarantine/` (not deleted) and the newest valid step is used instead.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from research.errors import CheckpointError, CheckpointGone

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
QUARANTINE = "quarantine"
CHECKSUMS = "checksums.json"
# Names of Orbax's on-disk format that this module depends on (orbax-checkpoint is bounded in
# pyproject.toml to the versions tested; tests/training/test_checkpoint.py fails, naming them, if
# they change): the suffix of a step still being written, and the two files Orbax writes after our
# checksums (the commit time stamp, the commit marker), which are checked for presence only.
TMP_MARK = ".orbax-checkpoint-tmp"
ORBAX_METADATA = "_CHECKPOINT_METADATA"
ORBAX_COMMIT = "commit_success.txt"
_UNHASHED = (ORBAX_METADATA, ORBAX_COMMIT, CHECKSUMS)
# Config keys that a checkpoint's state or data position depends on: a resumed run may not change
# them. Other optimizer keys can change the optimizer state's structure (sgd momentum on or off),
# so all but one count.
FIXED_KEYS = ("seed", "data.name", "data.batch_size", "model", "optimizer")
FREE_KEYS = ("optimizer.learning_rate",)


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def due(
  step: int, steps_per_epoch: int, total_steps: int, every_steps: int, every_epochs: int
) -> bool:
  """Whether the policy saves after training step `step` (counted from 1);
  the last step is always saved.

  `every_steps` and `every_epochs` are 0 when off.
  """
  epoch_end = step % steps_per_epoch == 0
  return (
    step == total_steps
    or (every_steps > 0 and step % every_steps == 0)
    or (epoch_end and every_epochs > 0 and (step // steps_per_epoch) % every_epochs == 0)
  )


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _raise(error: OSError) -> None:
  raise error


def _files(path: str) -> list[str]:
  """The relative path of every file under `path` but the unhashed ones, sorted. A directory that
  cannot be listed raises (`os.walk` would skip it silently, leaving its files unlisted)."""
  found = []
  for root, _, names in os.walk(path, onerror=_raise):
    found.extend(os.path.relpath(os.path.join(root, name), path) for name in names)
  return sorted(rel for rel in found if rel not in _UNHASHED)


def _digests(path: str) -> dict[str, dict]:
  """{relative file path: {"bytes", "sha256"}} for every file under `path` but the unhashed ones."""
  files = {}
  for rel in _files(path):
    full = os.path.join(path, rel)
    files[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
  return files


def _incomplete(listed: Iterable[str]) -> str | None:
  """Why a manifest listing the files `listed` cannot be a whole step's, or None. Orbax writes
  every step's `state` and `meta` as files under `state/` and `meta/`, so a manifest without them
  (an empty one included) would vouch for a step that holds neither."""
  listed = list(listed)
  if not listed:
    return f"{CHECKSUMS} lists no file"
  for item in ("state", "meta"):
    if not any(rel.startswith(item + os.sep) for rel in listed):
      return f"{CHECKSUMS} lists no file under {item}{os.sep}"
  return None


def seal(root: str) -> None:
  """Orbax's post-finalization callback: writes `checksums.json` into the step it is about to
  rename.

  Runs in Orbax's background thread, once a save's files are complete and before the atomic rename.
  Saves are serial and leftovers were removed at start,
  so exactly one temporary step directory exists.
  """
  pending = [name for name in os.listdir(root) if TMP_MARK in name]
  if len(pending) != 1:
    raise CheckpointError(
      f"expected one unfinished save in {root}, found {pending or 'none'}; is another run "
      "writing there?"
    )
  path = os.path.join(root, pending[0])
  files = _digests(path)
  reason = _incomplete(files)
  if reason is not None:  # Raised here, the step is never committed (Orbax renames it after).
    raise CheckpointError(f"refusing to seal the save in {path}: its {reason}")
  with open(os.path.join(path, CHECKSUMS + ".tmp"), "w") as f:
    json.dump({"files": files}, f, indent=1, sort_keys=True)
  os.replace(os.path.join(path, CHECKSUMS + ".tmp"), os.path.join(path, CHECKSUMS))


def make_manager(workdir: str, policy: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """An async manager over `<workdir>/checkpoints` under the `config.train` policy: keeps the newest
  `keep_checkpoints` steps and the best `keep_best` by `best_metric`.

  Latest and best are two policies joined by `AnyPreservationPolicy`: `max_to_keep` with `best_fn`
  alone keeps only the best, and can delete a step right after saving it. `best_fn` is still set, as
  Orbax writes the metrics that `BestN` ranks (also after a restart) only when it is.
  """
  kept = [policies.LatestN(n=policy.keep_checkpoints)]
  best_fn = None
  if policy.keep_best:
    metric = policy.best_metric

    def best_fn(m):
      return m[metric]

    kept.append(
      policies.BestN(
        get_metric_fn=best_fn,
        reverse=policy.best_mode == "min",
        n=policy.keep_best,
        keep_checkpoints_without_metrics=False,
      )
    )
  root = directory(workdir)
  options = ocp.CheckpointManagerOptions(
    create=True,
    enable_async_checkpointing=True,
    preservation_policy=policies.AnyPreservationPolicy(kept),
    best_fn=best_fn,
    best_mode=policy.best_mode,
    async_options=ocp.AsyncOptions(post_finalization_callback=lambda: seal(root)),
  )
  return ocp.CheckpointManager(root, options=options)


def save(
  manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics: dict | None = None
) -> None:
  """Starts saving `state` and `meta` as `step` (with `metrics` to rank it by); returns once the
  state is copied to host memory, before the files are written. Waits for the previous save
  first."""
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    metrics=metrics,
    force=True,
  )


def remove_unfinished(workdir: str) -> list[str]:
  """Deletes the temporary directories of saves that a killed run left unfinished;
  returns their names. Quarantines stray files first (`quarantine_strays`).

  They never became checkpoints (Orbax renames a step only once it is complete), so nothing is lost.
  """
  quarantine_strays(workdir)
  root = directory(workdir)
  names = sorted(n for n in os.listdir(root) if TMP_MARK in n) if os.path.isdir(root) else []
  for name in names:
    shutil.rmtree(os.path.join(root, name))
  return names


def quarantine_strays(workdir: str) -> list[str]:
  """Moves to `<workdir>/quarantine/` every file (anything not a directory) in
  `<workdir>/checkpoints` named as a step or an unfinished save is, each named in a logged warning;
  returns where they went.

  Such a file is corrupt: Orbax deletes a step's path without a word when it saves that step, and a
  file named as an unfinished save would make every save fail. Call this before saving.
  """
  root = directory(workdir)
  if not os.path.isdir(root):
    return []
  strays = sorted(
    n
    for n in os.listdir(root)
    if (n.isdigit() or TMP_MARK in n) and not os.path.isdir(os.path.join(root, n))
  )
  moved = []
  for name in strays:
    if name.isdigit():
      reason = f"it is a file, not a step directory (Orbax deletes it when it saves step {name})"
    else:
      reason = "it is a file, not an unfinished save's directory (every save would fail on it)"
    moved.append(_quarantine(workdir, name, reason))
    log.warning(
      f"warning: checkpoint {os.path.join(root, name)} is corrupt: {reason}. Moved it to "
      f"{moved[-1]} for inspection."
    )
  return moved


def steps(workdir: str) -> list[int]:
  """The committed steps in `<workdir>/checkpoints`, oldest first (verified or not)."""
  root = directory(workdir)
  if not os.path.isdir(root):
    return []
  return sorted(
    int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))
  )


def verify(path: str) -> str | None:
  """Why the step directory `path` cannot be trusted, or None when its files are exactly those its
  `checksums.json` lists (besides the unhashed ones), each matching its checksum."""
  for name in _UNHASHED:
    if not os.path.isfile(os.path.join(path, name)):
      return (
        f"{name} is missing"
        if name != CHECKSUMS
        else f"it has no {CHECKSUMS} (saved by an older convlab, or damaged)"
      )
  try:
    with open(os.path.join(path, ORBAX_METADATA)) as f:
      json.load(f)
    with open(os.path.join(path, CHECKSUMS)) as f:
      files = json.load(f)["files"]
    expected = {rel: (int(v["bytes"]), str(v["sha256"])) for rel, v in files.items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    return f"its metadata is damaged ({type(e).__name__}: {e})"
  reason = _incomplete(expected)
  if reason is not None:
    return f"its {reason} (every save lists the files Orbax wrote)"
  try:
    on_disk = set(_files(path))
  except OSError as e:  # Deleted while verified (a live run's keep policy), or unreadable.
    return f"its files cannot be listed ({type(e).__name__}: {e})"
  missing, unlisted = sorted(set(expected) - on_disk), sorted(on_disk - set(expected))
  if missing:
    return f"{_some(missing)} {'is' if len(missing) == 1 else 'are'} missing"
  if unlisted:
    return (
      f"{_some(unlisted)} {'is' if len(unlisted) == 1 else 'are'} not in {CHECKSUMS} (written "
      "after the step was saved)"
    )
  for rel, (size, digest) in sorted(expected.items()):
    full = os.path.join(path, rel)
    if os.path.getsize(full) != size:
      return f"{rel} has {os.path.getsize(full)} bytes where {size} were written (truncated?)"
    if _sha256(full) != digest:
      return f"{rel} does not match its checksum (its bytes changed after it was written)"
  return None


def _some(names: list[str], shown: int = 5) -> str:
  """`names` joined by commas, at most `shown` of them, then how many more."""
  more = f" and {len(names) - shown} more" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def _quarantine(workdir: str, step: int | str, reason: str) -> str:
  """Moves `<workdir>/checkpoints/<step>`, a step directory or a stray file, to
  `<workdir>/quarantine/` (never deletes it), with the reason beside; returns where."""
  target = os.path.join(os.path.abspath(workdir), QUARANTINE, str(step))
  n = 0
  while os.path.lexists(target) or os.path.lexists(target + ".reason.txt"):
    n += 1
    target = os.path.join(os.path.abspath(workdir), QUARANTINE, f"{step}.{n}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(os.path.join(directory(workdir), str(step)), target)
  with open(target + ".reason.txt", "w") as f:
    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}\n")
  return target


def latest_valid(workdir: str, quarantine: bool, below: int | None = None) -> int | None:
  """The newest step (older than `below`, if given) that passes `verify`, or None when there is no
  such step at all.

  Each newer step that fails is named in a logged warning and, with `quarantine`, moved to
  `<workdir>/quarantine/`: the run will save those steps again. When steps exist but none is valid:
  a `CheckpointError`, nothing moved. With `quarantine`, stray files are moved first
  (`quarantine_strays`).
  """
  if quarantine:
    quarantine_strays(workdir)
  found, bad = [s for s in steps(workdir) if below is None or s < below], []
  for step in reversed(found):
    reason = verify(os.path.join(directory(workdir), str(step)))
    if reason is None:
      break
    if not os.path.isdir(os.path.join(directory(workdir), str(step))):
      continue  # Deleted while verified (a live run's keep policy): gone, not corrupt.
    bad.append((step, reason))
  else:
    if bad:
      raise _none_usable(workdir, "no valid checkpoint", bad)
    return None
  for bad_step, reason in bad:
    path = os.path.join(directory(workdir), str(bad_step))
    if quarantine:
      _set_aside(workdir, bad_step, reason, step)
    else:
      log.warning(
        f"warning: checkpoint {path} is corrupt: {reason}. Skipping it; using step {step}."
      )
  return step


def snapshot(workdir: str, step: int, into: str) -> str:
  """Copies step `step` of `workdir` into the folder `into` and returns the copy's path: a copy that
  a live run's keep policy cannot delete while it is read. A `CheckpointGone` if the step was
  deleted before or while it was copied."""
  source, target = os.path.join(directory(workdir), str(step)), os.path.join(into, str(step))
  shutil.rmtree(target, ignore_errors=True)
  try:
    shutil.copytree(source, target)
  except (FileNotFoundError, shutil.Error):
    if not os.path.isdir(source):
      raise CheckpointGone(
        f"checkpoint {source} was deleted while it was read: a run training in {workdir} keeps "
        "only its newest and best steps and removed it"
      ) from None
    raise
  return target


def _read(workdir: str, step: int, items: dict, path: str | None = None) -> Any:
  path = path or os.path.join(directory(workdir), str(step))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    return checkpointer.restore(path, args=ocp.args.Composite(**items))
  except Exception as e:  # Orbax raises many types; what matters is below.
    if not os.path.isdir(path):
      raise CheckpointGone(
        f"checkpoint {path} was deleted while it was read: a run training in {workdir} keeps "
        "only its newest and best steps and removed it"
      ) from None
    raise Unrestorable(path, _first_line(e)) from None
  finally:
    checkpointer.close()


def _first_line(e: Exception) -> str:
  """`Type: message` of `e`, its first line only and at most 200 characters."""
  text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
  return text if len(text) <= 200 else text[:197] + "..."


class Unrestorable(CheckpointError):
  """A step that passed its checksums but could not be restored (`why`: the cause, one line)."""

  def __init__(self, path: str, why: str):
    self.path, self.why = path, why
    super().__init__(f"checkpoint {path} passed its checksums but could not be restored ({why})")


def restore_newest(
  workdir: str, target: Any, check_meta: Callable[[int, dict], None] | None = None
) -> tuple[int, Any, dict] | None:
  """(step, state, meta) of the newest step that passes `verify` and restores onto `target`, or None
  when there is no step at all.

  Steps that fail their checksums are quarantined as by `latest_valid`. A step that passes them but
  cannot be read is corrupt too (garbage re-checksummed metadata, corrupt compressed data): once an
  older step restores, each such newer step is moved to quarantine with its reason. If the step's
  data reads back but not onto `target`, the model code changed: a `CheckpointError` saying to train
  into a new workdir, nothing moved. If no step restores, a `CheckpointError` naming each step
  and why, nothing moved. `check_meta(step, meta)` may refuse a step's meta (it raises).
  """
  failed = []
  while (
    step := latest_valid(workdir, quarantine=True, below=failed[-1][0] if failed else None)
  ) is not None:
    path = os.path.join(directory(workdir), str(step))
    try:
      meta = read_meta(workdir, step)
      if check_meta is not None:
        check_meta(step, meta)
      state, meta = restore(workdir, step, target)
    except Unrestorable as e:
      try:
        restore(workdir, step)  # As saved: the data is sound, so the state's structure changed.
      except Unrestorable:
        failed.append((step, e.why))
        continue
      raise CheckpointError(
        f"checkpoint {path} holds a train state of another structure than this code's model "
        f"({e.why}): the model code changed since it was saved; train into a new --workdir, or "
        "run the code it was saved with"
      ) from None
    for bad, why in failed:
      _set_aside(workdir, bad, f"it passed its checksums but could not be restored ({why})", step)
    return step, state, meta
  if failed:
    raise _none_usable(workdir, "no checkpoint restores", failed)
  return None


def _set_aside(workdir: str, step: int, reason: str, fallback: int) -> None:
  """Quarantines corrupt step `step` and says so in one line."""
  path = os.path.join(directory(workdir), str(step))
  log.warning(
    f"warning: checkpoint {path} is corrupt: {reason}. Moved it to "
    f"{_quarantine(workdir, step, reason)} for inspection; falling back to step {fallback}."
  )


def _none_usable(workdir: str, what: str, failures: list[tuple[int, str]]) -> CheckpointError:
  """The error when no step of `workdir` can be used: each step and why, in one line."""
  return CheckpointError(
    f"{what} in {directory(workdir)}: "
    + "; ".join(f"step {s}: {why}" for s, why in failures)
    + ". Nothing was moved. To start this run afresh, move that directory away (or train into a "
    "new --workdir)."
  )


def read_meta(workdir: str, step: int, path: str | None = None) -> dict:
  """The `meta` of `step` (data position, unfinished epoch's step metrics, metrics, config), read
  from `path` if given (a `snapshot` of the step). Verify it first."""
  return _read(workdir, step, {"meta": ocp.args.JsonRestore()}, path).meta


def restore(
  workdir: str, step: int, target: Any = None, path: str | None = None
) -> tuple[Any, dict]:
  """(state, meta) of `step`, read from `path` if given (a `snapshot` of the step). With `target`,
  the state takes its tree structure, shapes, dtypes and shardings; without, it is restored as
  saved. Verify the step first (`verify`)."""
  abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = _read(
    workdir,
    step,
    {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()},
    path,
  )
  return restored.state, restored.meta


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, current value)} for every key that differs between two configs as
  JSON dicts; a key missing on one side has the value `"<absent>"` there."""
  old, new = _flatten(saved), _flatten(current)
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
