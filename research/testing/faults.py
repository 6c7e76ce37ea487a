"""Deterministic crash points for the crash-safety tests, injected from outside the library.

A fault is `ACTION@POINT:STEP`. ACTION is `kill` (SIGKILL: nothing gets to clean up), `term`
(SIGTERM: what a scheduler sends before it preempts), `int` (SIGINT: Ctrl-C) or `int2` (Ctrl-C
twice). POINT says where, at training step STEP
(counted from 1):
  step    right after the step is dispatched, once earlier saves have committed;
  save    right after an asynchronous save of STEP started, its files half written;
  commit  inside Orbax's commit of STEP, before its checksums are written and its directory renamed.

`injected(fault)` wraps three library functions for the duration of a `with` (no library code path
knows about faults): `training.checkpoint.save` (save), `training.checkpoint.seal`, Orbax's
post-finalization callback (commit), and `training.train.EpochLog.add`, called once per dispatched
step (step; `training.checkpoint.make_manager` is wrapped to find the manager whose saves it
waits for).

    python -m research.testing.faults FAULT path/to/run.py [run.py arguments]

runs `run.py` with the fault injected, for a test that kills a real process.
"""

import contextlib
import os
import runpy
import signal
import sys
from collections.abc import Iterator

from research.training import checkpoint, train

# `int2`: two SIGINTs in a row (a user pressing Ctrl-C twice).
SIGNALS = {
  "kill": signal.SIGKILL,
  "term": signal.SIGTERM,
  "int": signal.SIGINT,
  "int2": signal.SIGINT,
}
POINTS = ("step", "save", "commit")


def parse(fault: str) -> tuple[signal.Signals, str, int]:
  """(signal, point, step) of `ACTION@POINT:STEP`; a `ValueError` for anything else."""
  action, _, where = fault.partition("@")
  point, _, step = where.partition(":")
  if action not in SIGNALS or point not in POINTS or not step.isdigit():
    raise ValueError(
      f"fault {fault!r} is not ACTION@POINT:STEP with ACTION in {sorted(SIGNALS)} and POINT "
      f"in {POINTS}"
    )
  return SIGNALS[action], point, int(step)


@contextlib.contextmanager
def injected(fault: str) -> Iterator[None]:
  """Inside the `with`, this process sends itself the fault's signal at its point and step."""
  sig, point, at = parse(fault)
  times = 2 if fault.startswith("int2@") else 1
  originals = {
    "save": checkpoint.save,
    "seal": checkpoint.seal,
    "make_manager": checkpoint.make_manager,
    "add": train.EpochLog.add,
  }
  managers = []

  def fire(where: str, step: int) -> None:
    if where == point and step == at:
      if where == "step":  # Let earlier saves commit, so that the test knows the state it kills.
        for manager in managers:
          manager.wait_until_finished()
      for _ in range(times):
        os.kill(os.getpid(), sig)

  def make_manager(*args, **kwargs):
    managers.append(originals["make_manager"](*args, **kwargs))
    return managers[-1]

  def save(manager, step, *args, **kwargs):
    originals["save"](manager, step, *args, **kwargs)
    fire("save", step)

  def seal(root):
    pending = [name for name in os.listdir(root) if checkpoint.TMP_MARK in name]
    if len(pending) == 1:
      fire("commit", int(pending[0].split(".")[0]))
    originals["seal"](root)

  def add(self, step, step_metrics):
    fire("step", step)
    originals["add"](self, step, step_metrics)

  checkpoint.save, checkpoint.seal, checkpoint.make_manager = save, seal, make_manager
  train.EpochLog.add = add
  try:
    yield
  finally:
    checkpoint.save, checkpoint.seal = originals["save"], originals["seal"]
    checkpoint.make_manager, train.EpochLog.add = originals["make_manager"], originals["add"]


def main(argv: list[str]) -> None:
  fault, script, *args = argv
  sys.argv = [script, *args]
  with injected(fault):
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main(sys.argv[1:])
