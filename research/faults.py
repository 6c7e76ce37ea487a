"""Deterministic crash points for the crash-safety tests: `CONVLAB_FAULT=ACTION@POINT:STEP`.

ACTION is `kill` (SIGKILL: nothing gets to clean up) or `term` (SIGTERM: what a scheduler sends before it
preempts). POINT says where, at training step STEP (counted from 1): `step` (right after the step is dispatched,
once earlier saves have committed), `save` (right after an asynchronous save of STEP started, its files half
written) or `commit` (inside Orbax's commit of STEP, before its checksums are written and its directory is
renamed). Unset in normal runs: no effect.
"""

import os
import signal
from typing import Callable

ENV = "CONVLAB_FAULT"
_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}


def inject(point: str, step: int, settle: Callable[[], None] | None = None) -> None:
  """Sends this process the signal `$CONVLAB_FAULT` names, if it names (`point`, `step`).

  `settle` runs first (e.g. waiting for earlier saves to commit), so that the test knows the state it kills.
  """
  spec = os.environ.get(ENV)
  if not spec:
    return
  action, _, where = spec.partition("@")
  if where == f"{point}:{step}" and action in _SIGNALS:
    if settle is not None:
      settle()
    os.kill(os.getpid(), _SIGNALS[action])
