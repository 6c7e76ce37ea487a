"""One run per workdir: `<workdir>/run.lock`, held with flock(2) for as long as the run lives.

The kernel drops an flock when its holder dies, however it dies, so a lock file left by a killed run
holds no lock: it is stale by construction and is taken over. The file records its holder
(pid, host, start time) for the messages.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from research.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


def _holder(fd: int) -> str:
  """Who the lock file says holds it, in words ('' for an empty or unreadable file)."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"
  except (ValueError, KeyError, TypeError, OSError):
    return ""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/run.lock` inside the `with`; a live holder elsewhere is a `CheckpointError`
  naming it."""
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd) or "holder unknown"
      os.close(fd)
      raise CheckpointError(
        f"workdir {workdir} is in use by another run ({holder}); wait for it to end or stop "
        "it, or train into another --workdir"
      ) from None
    except OSError as e:
      os.close(fd)
      raise CheckpointError(
        f"cannot lock {path} ({e.strerror}); this filesystem may not support flock: train "
        "into a workdir on a local disk"
      ) from None
    # A holder that just ended unlinked the file we opened: lock the file now at `path` instead.
    try:
      current = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      current = False
    if current:
      break
    os.close(fd)
  previous = _holder(fd)
  if previous:
    log.info(f"Took over the stale lock of {workdir} ({previous}; that run is gone).")
  os.ftruncate(fd, 0)
  os.pwrite(
    fd,
    json.dumps(
      {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
      }
    ).encode(),
    0,
  )
  try:
    yield
  finally:
    os.unlink(path)
    os.close(fd)
