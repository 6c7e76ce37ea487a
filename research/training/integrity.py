"""What makes a saved step trustworthy: checksums written at commit, verified before use, and
quarantine for what fails.

Orbax keeps no checksum. `seal`, Orbax's post-finalization callback, writes `checksums.json` (bytes
and SHA-256 of every other file) into a step's temporary directory before the atomic rename that
commits it, so every committed step has one. `verify` checks a step against it; `latest_valid`
picks the newest step that passes. A step that fails is never trained on: it is moved to
`<workdir>/quarantine/` with its reason beside it (never deleted), and the newest valid step is
used instead. `remove_unfinished` deletes the temporary directories of saves a killed run left
(they never became checkpoints, so nothing is lost).
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable

from research.errors import CheckpointError, first_line

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


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


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
    return f"its metadata is damaged ({first_line(e)})"
  reason = _incomplete(expected)
  if reason is not None:
    return f"its {reason} (every save lists the files Orbax wrote)"
  try:
    on_disk = set(_files(path))
  except OSError as e:  # Deleted while verified (a live run's keep policy), or unreadable.
    return f"its files cannot be listed ({first_line(e)})"
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
      raise none_usable(workdir, "no valid checkpoint", bad)
    return None
  for bad_step, reason in bad:
    path = os.path.join(directory(workdir), str(bad_step))
    if quarantine:
      set_aside(workdir, bad_step, reason, step)
    else:
      log.warning(
        f"warning: checkpoint {path} is corrupt: {reason}. Skipping it; using step {step}."
      )
  return step


def set_aside(workdir: str, step: int, reason: str, fallback: int) -> None:
  """Quarantines corrupt step `step` and says so in one line."""
  path = os.path.join(directory(workdir), str(step))
  log.warning(
    f"warning: checkpoint {path} is corrupt: {reason}. Moved it to "
    f"{_quarantine(workdir, step, reason)} for inspection; falling back to step {fallback}."
  )


def none_usable(workdir: str, what: str, failures: list[tuple[int, str]]) -> CheckpointError:
  """The error when no step of `workdir` can be used: each step and why, in one line."""
  return CheckpointError(
    f"{what} in {directory(workdir)}: "
    + "; ".join(f"step {s}: {why}" for s, why in failures)
    + ". Nothing was moved. To start this run afresh, move that directory away (or train into a "
    "new --workdir)."
  )
