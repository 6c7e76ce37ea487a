"""Preparing a dataset is exclusive: first runs that share a fresh data dir prepare it once, the
others wait for it and read it; a data dir that cannot be one, or cannot be locked, is a
`DataError` naming it."""

import errno
import fcntl
import os
import re
import subprocess
import sys
import textwrap

import pytest

from research.data import splits
from research.errors import DataError

from support import ROOT, load

PROCESSES = 3
# One first run: the embedded digits' builder is patched so that every process, having seen the
# dataset unprepared, waits at a file barrier until all have, and then all go on to prepare it at
# once; `download_and_prepare` prints PREPARING.
SCRIPT = textwrap.dedent("""
  import logging, os, sys, time
  sys.path.insert(0, {root!r})
  from research.data import splits
  from research.data.datasets import sklearn_digits
  from support import load

  logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
  data_dir, barrier, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
  builder = sklearn_digits.SklearnDigits
  is_prepared, download_and_prepare = builder.is_prepared, builder.download_and_prepare
  arrived = []

  def is_prepared_then_barrier(self):
    prepared = is_prepared(self)
    if not arrived:  # The first check of this process.
      arrived.append(True)
      open(os.path.join(barrier, str(os.getpid())), "w").close()
      deadline = time.monotonic() + 120
      while len(os.listdir(barrier)) < processes:
        if time.monotonic() > deadline:
          sys.exit("the barrier timed out")
        time.sleep(0.005)
    return prepared

  def announced(self, *args, **kwargs):
    print("PREPARING", flush=True)
    return download_and_prepare(self, *args, **kwargs)

  builder.is_prepared, builder.download_and_prepare = is_prepared_then_barrier, announced
  info = splits.info(load(f"data.data_dir={{data_dir}}"))
  print("INFO", info.num_train, info.num_test, flush=True)
""").format(root=ROOT)


def test_first_runs_sharing_a_fresh_data_dir_prepare_it_once(tmp_path):
  data_dir, barrier = tmp_path / "tfds", tmp_path / "barrier"
  barrier.mkdir()
  command = [sys.executable, "-c", SCRIPT, str(data_dir), str(barrier), str(PROCESSES)]
  runs = [
    subprocess.Popen(
      command,
      cwd=os.path.join(ROOT, "tests"),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(PROCESSES)
  ]
  outputs = [run.communicate(timeout=300) for run in runs]
  for run, (stdout, stderr) in zip(runs, outputs):
    assert run.returncode == 0, stderr[-3000:]
    assert "INFO 1437 360" in stdout.splitlines(), stdout
  stdouts = "".join(stdout for stdout, _ in outputs)
  assert stdouts.count("PREPARING") == 1
  # The others found it prepared when they got the lock (at least one had to wait for it).
  stderrs = "".join(stderr for _, stderr in outputs)
  found = f"LOG Another process prepared sklearn_digits in {data_dir}: reading it from there."
  assert stderrs.splitlines().count(found) == PROCESSES - 1
  waiting = f"LOG waiting for another process preparing sklearn_digits in {data_dir}"
  waited = [stderr.splitlines().count(waiting) for _, stderr in outputs]
  assert max(waited) == 1 and sum(waited) >= 1, waited  # Said once, by those that waited.
  train, test = splits.load(load(f"data.data_dir={data_dir}"))
  assert (len(train), len(test)) == (1437, 360)


def test_a_data_dir_that_is_a_file_is_a_data_error_naming_it(tmp_path):
  path = tmp_path / "not_a_dir"
  path.write_text("")
  with pytest.raises(
    DataError, match=f"^the data dir {re.escape(str(path))} is a file, not a directory: "
  ) as e:
    splits.info(load(f"data.data_dir={path}"))
  assert "\n" not in str(e.value)
  under = path / "tfds"
  with pytest.raises(
    DataError, match=f"^the data dir {re.escape(str(under))} cannot be created \\(Not a dir"
  ):
    splits.info(load(f"data.data_dir={under}"))
  assert path.read_text() == ""  # Left as it was.


def test_a_data_dir_without_flock_is_one_data_error_naming_the_lock_file(tmp_path, monkeypatch):
  # A filesystem without flock, as the kernel reports it: every flock(2) fails with ENOSYS.
  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

  monkeypatch.setattr(fcntl, "flock", no_flock)
  path = tmp_path / "sklearn_digits.prepare.lock"
  with pytest.raises(DataError) as e:
    splits.info(load(f"data.data_dir={tmp_path}"))
  assert str(e.value).startswith(f"cannot lock {path} (Function not implemented): ")
  assert "may not support flock" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "sklearn_digits").exists()  # Nothing was prepared without the lock.
