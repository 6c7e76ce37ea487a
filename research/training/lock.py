"""One run per workdir: `<workdir>/run.lock`, an flock (through `filelock`) held while a run lives.

The kernel drops an flock when its holder dies, however it dies (kill -9 included), so a lock file
left by a killed run holds no lock: it is stale by construction and the next run takes it over,
saying so. The file records its holder (pid, host, start time) for the messages. The holder
removes it on release while still holding it; a run that locks the removed file meanwhile finds
it unlinked and locks the new one (`filelock` checks the link count once it holds a lock).
"""

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

import filelock

from research.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# What flock(2) fails with on a filesystem that does not implement it.
NO_LOCKING = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}


def _holder(record: bytes) -> str:
  """Who a lock file's `record` says holds it, in words ('' for an empty or unreadable one)."""
  try:
    info = json.loads(record or "null")
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"
  except (ValueError, KeyError, TypeError):
    return ""


def _says(path: str) -> str:
  """Who the lock file at `path` says holds it ('' where there is none, or it says nothing)."""
  try:
    with open(path, "rb") as f:
      return _holder(f.read())
  except OSError:
    return ""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/run.lock` inside the `with`; a live holder elsewhere is a `CheckpointError`
  naming it."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    before = open(path, "rb")  # Closed below, once the lock is held or refused.
  except OSError:
    before = None
  # `before` stays open, so its inode cannot be reused: if the file locked is that one, whoever its
  # record names held it and died without removing it.
  stale = _holder(before.read()) if before else ""
  taken_over = []

  def record(fd: int) -> None:  # `filelock` calls it holding the lock, with the locked file.
    if stale and os.path.sameopenfile(fd, before.fileno()):
      taken_over.append(stale)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)

  # Where flock is missing: the one-line error below, not `filelock`'s soft lock, which the kernel
  # does not release when its holder dies.
  lock = filelock.FileLock(path, fallback_to_soft=False, on_acquired=record)
  try:
    try:
      lock.acquire(blocking=False)
    except filelock.Timeout:
      if _says(path):
        raise
      lock.acquire(blocking=False)  # No record: a run that was ending removed it as this locked it.
  except filelock.Timeout:
    raise CheckpointError(
      f"workdir {workdir} is in use by another run ({_says(path) or 'holder unknown'}); wait for "
      "it to end or stop it, or train into another --workdir"
    ) from None
  except OSError as e:
    fix = (
      "this filesystem may not support flock: train into a workdir on a local disk"
      if e.errno in NO_LOCKING
      else "train into a --workdir this user can write"
    )
    raise CheckpointError(f"cannot lock {path} ({e.strerror or e}); {fix}") from None
  finally:
    if before:
      before.close()
  if taken_over:
    log.info(f"Took over the stale lock of {workdir} ({taken_over[0]}; that run is gone).")
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):  # The workdir went while the run trained.
      os.unlink(path)
    lock.release()
