"""Progress over a long job, in steps, with the rate and the time left.

On a terminal it is a tqdm bar. Where the output is not a terminal (a log file, a scheduler's
capture) the bar draws nothing, and a plain line goes to a logger every `interval` seconds instead:
`<prefix>step 120/600 (20%), 14.2 steps/s, about 0.6 min left`. One `Progress` may count several
runs (an ablation's variants and seeds share one); a training run that is given none makes its own.
"""

import logging
import time

import tqdm

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60.0  # The default gap between two progress lines where no bar is drawn.


class Progress:
  """`total` steps, `initial` of them done already (read back, or resumed).

  `enabled=False` shows nothing (a process other than 0 of a multi-process run); `interval` is the
  seconds between two log lines where no bar is drawn (0: a line at every `advance`).
  """

  def __init__(
    self,
    total: int,
    initial: int = 0,
    desc: str | None = None,
    logger: logging.Logger = log,
    interval: float = INTERVAL_SECONDS,
    enabled: bool = True,
  ):
    self.total, self.start, self.done = total, initial, initial
    self.bar = tqdm.tqdm(
      total=total,
      initial=initial,
      desc=desc,
      unit="step",
      disable=None if enabled else True,
      dynamic_ncols=True,
    )
    self.lines = enabled and self.bar.disable
    self.logger, self.interval = logger, interval
    self.prefix = f"{desc}: " if desc else ""
    self.started = self.last = time.perf_counter()

  def advance(self, steps: int) -> None:
    """Counts `steps` more steps done."""
    self.done += steps
    self.bar.update(steps)
    if not self.lines:
      return
    now = time.perf_counter()
    if now - self.last < self.interval:
      return
    self.last = now
    rate = (self.done - self.start) / max(now - self.started, 1e-9)
    left = (self.total - self.done) / rate if rate else float("inf")
    self.logger.info(
      f"{self.prefix}step {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
      f"{rate:.1f} steps/s, about {left / 60:.1f} min left"
    )

  def describe(self, text: str) -> None:
    """Shows `text` beside the bar (what is being trained now)."""
    self.bar.set_postfix_str(text)

  def close(self) -> None:
    self.bar.close()
