"""The run lock where it cannot work: a filesystem without flock is one `CheckpointError` naming
the lock file, and nothing is left behind. (A live holder refusing a second run and a killed
holder's lock taken over: `test_checkpoint.py`, with a real SIGKILL.)"""

import errno
import fcntl
import os

import pytest

from research.errors import CheckpointError
from research.training import lock


def test_a_workdir_without_flock_is_one_checkpoint_error_naming_the_lock_file(
  tmp_path, monkeypatch
):
  # A filesystem without flock, as the kernel reports it: every flock(2) fails with ENOSYS.
  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

  monkeypatch.setattr(fcntl, "flock", no_flock)
  entered = []
  with pytest.raises(CheckpointError) as e:
    with lock.hold(str(tmp_path)):
      entered.append(True)
  path = tmp_path / lock.LOCK_FILE
  assert str(e.value) == (
    f"cannot lock {path} (Function not implemented); this filesystem may not support flock: "
    "train into a workdir on a local disk"
  )
  assert not entered  # The run did not start without the lock.


def test_a_run_that_ends_removes_its_lock_and_the_next_takes_it_without_a_word(tmp_path, caplog):
  with lock.hold(str(tmp_path)):
    pass
  assert not (tmp_path / lock.LOCK_FILE).exists()
  with lock.hold(str(tmp_path)):
    assert (tmp_path / lock.LOCK_FILE).exists()
  assert not [r for r in caplog.records if r.name == lock.__name__]  # Nothing was stale.
