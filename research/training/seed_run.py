"""One seed's run inside the training loop: its config, workdir, state, checkpoints and metrics.

`SeedRun.start` resumes the seed (`training.resume`) and opens its sinks: process 0 writes
`<workdir>/config.json` (the resolved config) and cuts `metrics.jsonl` back to the resumed step, so
every file follows the checkpoint the run continues from. `guard` turns a `NonFinite` raised by one
of the seed's services into the seed's `TrainingDiverged`: that seed stops, the others go on.
"""

import json
import logging
import os
from collections.abc import Callable

import ml_collections

from research import config as config_lib
from research.errors import TrainingDiverged
from research.training import checkpoint, distributed, metrics, resume
from research.training.epoch_log import EpochLog, NonFinite, diverged
from research.training.hooks import Hooks
from research.training.plan import Plan
from research.training.saving import Saver

log = logging.getLogger("research.training.train")

CONFIG_FILE = "config.json"


class SeedRun:
  """Seed `seed` of `config` training into `workdir`; `label` starts its lines (`"seed 3: "` when
  several seeds train together, else empty).

  After `start`: `state` and `step` (the newest step trained), `saver`, `writer`, `epoch_log`,
  `record` (the last metrics record), `diverged` (None while it trains) and `order` (the current
  epoch's batch indices on the devices).
  """

  def __init__(self, config: ml_collections.ConfigDict, seed: int, workdir: str, label: str):
    self.config = ml_collections.ConfigDict(config.to_dict())
    self.config.seed = self.seed = seed
    self.workdir, self.label = workdir, label
    self.diverged: TrainingDiverged | None = None
    self.record: dict = {}
    self.step = 0

  def prepare(self) -> None:
    """Creates the workdir (process 0 first: one that cannot be written is one line)."""
    self.workdir = distributed.writer_first(
      "convlab:workdir", lambda: resume.prepare_workdir(self.workdir)
    )

  def start(self, plan: Plan, hooks: Hooks) -> None:
    """Resumes (or starts) the seed and opens its sinks."""
    self.plan, self.hooks = plan, hooks
    self.state, meta = resume.resume(self.config, plan, self.workdir)
    self.step = int(self.state.step)
    config_json = config_lib.to_json(self.config)
    if distributed.is_writer():
      with open(os.path.join(self.workdir, CONFIG_FILE), "w") as f:
        f.write(config_json)
      metrics.truncate_after(self.workdir, self.step)
      self.writer = metrics.MetricWriter(self.workdir, self.label)
    else:
      self.writer = metrics.NoWriter()
    self.saver = Saver(
      self.workdir,
      self.config.train,
      plan.steps_per_epoch,
      plan.total_steps,
      json.loads(config_json),
      restored=self.step if meta else None,
      hooks=hooks,
    )
    self.record = (metrics.read(self.workdir) or [{}])[-1]
    self.epoch_log = EpochLog(*((meta["epoch_losses"], meta["epoch_accuracies"]) if meta else ()))

  def guard(self, service: Callable, *args) -> None:
    """Calls `service(*args)`; a `NonFinite` it raises stops this seed (`diverged` is set)."""
    try:
      service(*args)
    except NonFinite as e:
      self.diverged = diverged(
        e,
        self.plan.steps_per_epoch,
        self.saver.saved,
        checkpoint.directory(self.workdir),
        self.config.optimizer.learning_rate,
      )
      if self.label:  # A run of its own ends with this line as its error.
        log.error(f"{self.label}{self.diverged}")

  def save(self, record: dict | None = None) -> None:
    """Saves the current step (every loss up to it checked first), with `record` at an epoch's
    end."""
    self.epoch_log.flush()
    self.saver.save(self.step, self.state, self.epoch_log, record)

  def save_unless_saved(self) -> None:
    """Saves the current step at a stop request, unless it is saved already."""
    if self.saver.saved != self.step:
      epoch_end = self.step % self.plan.steps_per_epoch == 0
      self.save(self.record if epoch_end and self.record.get("step") == self.step else None)

  def close(self) -> None:
    """Closes the sinks and waits for the saves (`Saver.close`); then `hooks.on_close`."""
    if hasattr(self, "saver"):
      self.writer.close()
      self.saver.close(self.step)
      if self.hooks.on_close is not None:
        self.hooks.on_close(self.seed, self.state)
