"""Stopping a run on request: SIGTERM or Ctrl-C saves where the run is and stops it.

`signals()` installs the handlers for the duration of a run: the first SIGTERM or SIGINT sets a
`StopRequest`; a second SIGINT aborts at once (`KeyboardInterrupt`, nothing saved). Signals reach
only the main thread; a run in another thread is never asked to stop.

`should_stop(request, step, steps_per_epoch)` is where the loop asks, after each step. In one
process it reads the flag. Over several processes all of them must stop at the same step, since
saving is collective, so they agree (`distributed.any_process`, a collective) every
`AGREEMENT_STEPS` steps and at each epoch's end, not at every step, which would put a collective on
the hot path.

What the loop may not reorder: every process must call `should_stop` after every step, at the
same point of the loop, with the same step. A process that skipped it, or called it before a
collective that another process calls first (a save, an evaluation), would wait for a rendezvous
the others never join, and the run would deadlock.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

from research.training import distributed

AGREEMENT_STEPS = 16


class StopRequest:
  """`signal`: the name of the first SIGTERM or SIGINT received (None: none yet)."""

  def __init__(self):
    self.signal: str | None = None

  def is_set(self) -> bool:
    return self.signal is not None


@contextlib.contextmanager
def signals() -> Iterator[StopRequest]:
  """A `StopRequest` that SIGTERM or SIGINT sets inside the `with`; the previous handlers come back
  after it."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def handle(signum, frame):
    if request.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt
    request.signal = request.signal or signal.Signals(signum).name

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def should_stop(request: StopRequest, step: int, steps_per_epoch: int) -> bool:
  """Whether the run stops after step `step` (counted from 1): asked here, or, over several
  processes, in any of them (checked together at agreement steps and epoch ends only)."""
  asked = request.is_set()
  if not distributed.several():
    return asked
  if step % steps_per_epoch and step % AGREEMENT_STEPS:
    return False
  return distributed.any_process(asked)


def reason(request: StopRequest) -> str:
  """What stopped the run, for its last line."""
  return request.signal or "a stop request to another process"
