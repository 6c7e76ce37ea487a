"""Optimizers and learning-rate schedules by name, built from `config.optimizer` and
`config.schedule`.

Keys of `config.optimizer` other than `name` and `learning_rate` are passed to the optax function;
keys of `config.schedule` other than `name` are passed to the schedule factory. Unknown keys are a
`ConfigError` naming them, and so are numbers no schedule or optimizer takes: every schedule
argument must be a finite number >= 0 (`every_epochs` and `factor` > 0), every numeric optimizer
argument (momentum, weight decay, betas, eps, ...) finite and >= 0, the learning rate finite and
> 0, and a count of steps (warm-up, decay period, the whole run) must fit JAX's int32.
"""

import inspect
from collections.abc import Callable

import ml_collections
import optax

from research.config import INT_LIMIT, get, is_number, out_of_range
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


# Schedule arguments counted in epochs: `value * steps_per_epoch` steps must fit JAX's int32.
EPOCH_ARGUMENTS = ("warmup_epochs", "every_epochs")
# Arguments that must be above 0: a decay period of 0 steps, or a factor of 0, is no schedule.
POSITIVE_ARGUMENTS = ("every_epochs", "factor")


def _check_numbers(kwargs: dict, prefix: str, steps_per_epoch: int, numbers_only: bool) -> None:
  """Refuses (`ConfigError` naming `prefix.KEY`) a numeric argument that is negative, inf, nan,
  beyond float32's or int32's range, 0 where it must be positive, or an epoch count whose steps
  overflow int32; with `numbers_only` (schedules), also any argument that is not a number."""
  for key, value in kwargs.items():
    name = f"{prefix}.{key}"
    if not is_number(value):
      if numbers_only:
        raise ConfigError(name, f"must be a number, got {value!r}")
      continue  # Flags (nesterov), dtypes and masks are optax's to check.
    problem = out_of_range(value)
    if problem:
      raise ConfigError(name, f"must be a finite number, {problem}")
    if key in POSITIVE_ARGUMENTS and value <= 0:
      raise ConfigError(name, f"must be positive, got {value!r}")
    if value < 0:
      raise ConfigError(name, f"must be 0 or more, got {value!r}")
    if key in EPOCH_ARGUMENTS and value * steps_per_epoch > INT_LIMIT:
      raise ConfigError(
        name,
        f"{value!r} epochs of {steps_per_epoch} steps is more than 2**31 - 1 steps "
        "(JAX's int32 step count)",
      )


def build_optimizer(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, learning-rate schedule) for the run; the schedule maps step -> learning rate.

  Raises `ConfigError` naming the key for an unknown name or argument, or an impossible number (see
  the module docstring), before anything is built."""
  if total_steps > INT_LIMIT:
    raise ConfigError(
      "train.num_epochs",
      f"makes {total_steps} steps ({steps_per_epoch} an epoch), more than 2**31 - 1 "
      "(JAX's int32 step count)",
    )
  peak = get(config, "optimizer.learning_rate")
  if not is_number(peak) or peak <= 0 or out_of_range(peak):
    raise ConfigError("optimizer.learning_rate", f"must be a positive finite number, got {peak!r}")
  make_schedule = lookup(SCHEDULES, config.schedule.name, "schedule.name", "schedule")
  schedule_kwargs = _kwargs(make_schedule, config.schedule, ("name",), "schedule")
  _check_numbers(schedule_kwargs, "schedule", steps_per_epoch, numbers_only=True)
  make_optimizer = lookup(OPTIMIZERS, config.optimizer.name, "optimizer.name", "optimizer")
  optimizer_kwargs = _kwargs(
    make_optimizer, config.optimizer, ("name", "learning_rate"), "optimizer"
  )
  _check_numbers(optimizer_kwargs, "optimizer", steps_per_epoch, numbers_only=False)
  schedule = make_schedule(peak, total_steps, steps_per_epoch, **schedule_kwargs)
  optimizer = make_optimizer(learning_rate=schedule, **optimizer_kwargs)
  return optimizer, schedule
