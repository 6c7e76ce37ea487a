"""Optimizers and learning-rate schedules by name, built from `config.optimizer` and
`config.schedule`.

Keys of `config.optimizer` other than `name` and `learning_rate` are passed to the optax function;
keys of `config.schedule` other than `name` are passed to the schedule factory. Unknown keys are a
`ConfigError` naming them.
"""

import inspect
from collections.abc import Callable

import ml_collections
import optax

from research.errors import ConfigError
from research.registry import lookup

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  name: getattr(optax, name)
  for name in ("sgd", "adam", "adamw", "rmsprop", "lamb", "lion", "nadam")
}


def constant(
  peak: float, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0
) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_epochs`, then `peak`."""
  del total_steps
  warmup = int(warmup_epochs * steps_per_epoch)
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
  )


def cosine(
  peak: float,
  total_steps: int,
  steps_per_epoch: int,
  warmup_epochs: float = 0.0,
  end_fraction: float = 0.0,
) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to `end_fraction * peak` at the
  last step."""
  warmup = int(warmup_epochs * steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(
    0.0, peak, warmup, max(total_steps, warmup + 1), end_value=end_fraction * peak
  )


def step(
  peak: float, total_steps: int, steps_per_epoch: int, every_epochs: int = 30, factor: float = 0.1
) -> optax.Schedule:
  """`peak`, multiplied by `factor` every `every_epochs` epochs."""
  del total_steps
  return optax.exponential_decay(peak, every_epochs * steps_per_epoch, factor, staircase=True)


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
  "constant": constant,
  "cosine": cosine,
  "step": step,
}


def _kwargs(
  fn: Callable, section: ml_collections.ConfigDict, skip: tuple[str, ...], prefix: str
) -> dict:
  params = inspect.signature(fn).parameters
  kwargs = {k: v for k, v in section.items() if k not in skip}
  for key in kwargs:
    if key not in params:
      allowed = sorted(
        p
        for p in params
        if p not in skip + ("learning_rate", "peak", "total_steps", "steps_per_epoch")
      )
      raise ConfigError(
        f"{prefix}.{key}",
        f"{section.name!r} takes no such argument; it takes: {', '.join(allowed)}",
      )
  return kwargs


def build_optimizer(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, learning-rate schedule) for the run; the schedule maps step -> learning rate."""
  make_schedule = lookup(SCHEDULES, config.schedule.name, "schedule.name", "schedule")
  schedule = make_schedule(
    config.optimizer.learning_rate,
    total_steps,
    steps_per_epoch,
    **_kwargs(make_schedule, config.schedule, ("name",), "schedule"),
  )
  make_optimizer = lookup(OPTIMIZERS, config.optimizer.name, "optimizer.name", "optimizer")
  optimizer = make_optimizer(
    learning_rate=schedule,
    **_kwargs(make_optimizer, config.optimizer, ("name", "learning_rate"), "optimizer"),
  )
  return optimizer, schedule
