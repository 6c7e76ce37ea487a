"""Deterministic crash points for the crash-safety tests, through the loop's hooks only.

A fault is `ACTION@POINT:STEP`. ACTION is `kill` (SIGKILL: nothing gets to clean up), `term`
(SIGTERM: what a scheduler sends before it preempts), `int` (SIGINT: Ctrl-C) or `int2` (Ctrl-C
twice). POINT says where, at training step STEP (counted from 1), by the hook of that name
(`research.training.hooks`):
  step    right after the step is dispatched, once earlier saves have committed (`on_step`);
  save    right after an asynchronous save of STEP started, its files half written (`on_save`);
  commit  inside the commit of STEP, before its checksums are written and its directory renamed
          (`on_commit`).

`injected(fault)` installs those hooks for the runs started inside a `with`; no code path of the
library knows about faults.

    python tests/faults.py FAULT path/to/run.py [run.py arguments]

runs `run.py` with the fault injected, for a test that kills a real process.
"""

import contextlib
import os
import runpy
import signal
import sys
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.training import hooks

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


def fault_hooks(fault: str) -> hooks.Hooks:
  """Hooks that send this process the fault's signal at its point and step."""
  sig, point, at = parse(fault)
  times = 2 if fault.startswith("int2@") else 1

  def fire(step: int) -> None:
    if step == at:
      for _ in range(times):
        os.kill(os.getpid(), sig)

  def on_step(step, wait_for_saves):
    if step == at:  # Let earlier saves commit, so that the test knows the state it kills.
      wait_for_saves()
    fire(step)

  return hooks.Hooks(**{f"on_{point}": on_step if point == "step" else fire})


@contextlib.contextmanager
def injected(fault: str) -> Iterator[None]:
  """Inside the `with`, runs given no hooks of their own get the fault's."""
  previous, hooks.installed = hooks.installed, fault_hooks(fault)
  try:
    yield
  finally:
    hooks.installed = previous


def main(argv: list[str]) -> None:
  fault, script, *args = argv
  sys.argv = [script, *args]
  with injected(fault):
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main(sys.argv[1:])
