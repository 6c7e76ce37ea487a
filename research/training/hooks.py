"""The training loop's seams: what a benchmark or a test may observe or replace, and nothing else.

A run takes `hooks=Hooks(...)` (`train.train_seeds`); every field is optional, and a run without
them behaves as if none were given. Each is called at one documented point of the loop, in the
training thread (`on_commit`: in Orbax's background thread), with the step counted from 1:

  on_step(step, wait_for_saves)   after step `step` is dispatched (all seeds), before its metrics
                                  are read; `wait_for_saves()` blocks until every save started so
                                  far has committed (a crash test knows what is on disk)
  on_save(step)                   right after the asynchronous save of `step` started, its files
                                  still being written
  on_commit(step)                 inside the commit of `step`, after its files are written and
                                  before its checksums and the rename that commits it; raising
                                  here fails that save as a full disk would
  on_epoch(steps, seconds)        after each epoch trained in this process: the steps it trained
                                  (all seeds together) and the seconds from its first step to its
                                  last step's result plus its end-of-epoch save's blocking time
                                  (data, metrics, progress and checkpoints are in; evaluation is
                                  not; the first epoch includes compiling)
  on_close(seed, state)           as each seed's run closes (finished, stopped or diverged), with
                                  the `TrainState` the loop holds then: a test compares the
                                  parameters several processes ended with
  steps                           replaces `training.state.parallel_steps`, the seeds' step
                                  function the loop compiles (same signature): a test makes a loss
                                  or the parameters non-finite at a chosen step
  progress_seconds                where no progress bar is drawn, the seconds between two progress
                                  lines of a run's own `Progress` (0: every step)

`run.py` passes no hooks; `installed` lets a harness around `run.py` (tests/faults.py, which kills
real processes at these points) give hooks to the runs it starts, without any code path of the
library knowing about faults.
"""

import dataclasses
from collections.abc import Callable

from research.progress import INTERVAL_SECONDS


@dataclasses.dataclass(frozen=True)
class Hooks:
  on_step: Callable[[int, Callable[[], None]], None] | None = None
  on_save: Callable[[int], None] | None = None
  on_commit: Callable[[int], None] | None = None
  on_epoch: Callable[[int, float], None] | None = None
  on_close: Callable[[int, object], None] | None = None
  steps: Callable | None = None
  progress_seconds: float = INTERVAL_SECONDS


installed = Hooks()  # What a run given no `hooks` uses; only a harness sets it.
