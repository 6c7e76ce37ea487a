"""Learning-rate schedules by name: each one's values against its formula, worked out by hand.

A schedule maps the optimizer's update count (0 for the first update) to the learning rate. Every
case uses 10 steps per epoch, so epoch boundaries fall on round steps; expected values are written
out as numbers, not computed by the code under test (optax returns float32, hence `rel=1e-6`).
"""

import math

import pytest

from research.errors import ConfigError
from research.training import optim

from support import load

STEPS_PER_EPOCH = 10


def _schedule(name: str, peak: float, total_steps: int, **keys):
  """The schedule `build_optimizer` returns for `schedule.name=name` with exactly `keys` set."""
  config = load(f"schedule.name='{name}'", f"optimizer.learning_rate={peak}")
  with config.schedule.unlocked():
    del config.schedule["warmup_epochs"]  # The default experiment's; set again below if wanted.
    for key, value in keys.items():
      config.schedule[key] = value
  _, schedule = optim.build_optimizer(config, total_steps, STEPS_PER_EPOCH)
  return schedule


def _values(schedule, steps) -> list[float]:
  return [float(schedule(s)) for s in steps]


def test_constant_schedule_warms_up_linearly_from_zero_then_holds_the_peak():
  # 1.5 warm-up epochs x 10 steps = 15 steps: step s < 15 gets 0.3 * s / 15 = 0.02 * s.
  schedule = _schedule("constant", 0.3, total_steps=100, warmup_epochs=1.5)
  steps = [0, 1, 5, 14, 15, 16, 50, 99, 100, 1000]
  expected = [0.0, 0.02, 0.1, 0.28, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
  assert _values(schedule, steps) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_constant_schedule_without_warm_up_is_the_peak_from_the_first_step():
  schedule = _schedule("constant", 0.3, total_steps=100)
  assert _values(schedule, [0, 1, 50, 99]) == pytest.approx([0.3] * 4, rel=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_the_end_fraction_of_the_peak():
  # Peak 0.1, end 0.2 * 0.1 = 0.02, warm-up 2 epochs = 20 steps, 120 steps in all: the cosine runs
  # over the 100 steps from 20 to 120, lr(s) = 0.02 + 0.08 * (1 + cos(pi * (s - 20) / 100)) / 2.
  schedule = _schedule("cosine", 0.1, total_steps=120, warmup_epochs=2.0, end_fraction=0.2)
  by_hand = {
    0: 0.0,  # Warm-up from 0: 0.1 * s / 20.
    10: 0.05,
    19: 0.095,
    20: 0.1,  # The peak: cos(0) = 1.
    45: 0.02 + 0.04 * (1 + math.sqrt(0.5)),  # A quarter of the way: cos(pi / 4) = sqrt(1/2).
    70: 0.06,  # Halfway: cos(pi / 2) = 0, so the mean of peak and end.
    95: 0.02 + 0.04 * (1 - math.sqrt(0.5)),  # Three quarters: cos(3 pi / 4) = -sqrt(1/2).
    120: 0.02,  # cos(pi) = -1: the end value once all 120 updates are done ...
    500: 0.02,  # ... and it stays there.
  }
  assert _values(schedule, by_hand) == pytest.approx(list(by_hand.values()), rel=1e-6, abs=1e-9)
  # In between it only falls.
  decay = _values(schedule, range(20, 121))
  assert all(a > b for a, b in zip(decay, decay[1:]))


def test_cosine_schedule_ends_at_zero_by_default():
  # Without end_fraction (0) and warm-up: lr(s) = 0.1 * (1 + cos(pi * s / 40)) / 2.
  schedule = _schedule("cosine", 0.1, total_steps=40)
  assert _values(schedule, [0, 20, 40]) == pytest.approx([0.1, 0.05, 0.0], rel=1e-6, abs=1e-9)


def test_step_schedule_multiplies_by_factor_every_n_epochs():
  # Every 3 epochs = 30 steps, times 0.5: 0.08 for steps 0..29, 0.04 for 30..59, 0.02, 0.01, ...
  schedule = _schedule("step", 0.08, total_steps=200, every_epochs=3, factor=0.5)
  steps = [0, 1, 29, 30, 31, 59, 60, 89, 90, 199]
  expected = [0.08, 0.08, 0.08, 0.04, 0.04, 0.04, 0.02, 0.02, 0.01, 0.08 * 0.5**6]
  assert _values(schedule, steps) == pytest.approx(expected, rel=1e-6)


def _config_with(section: str, name: str, **keys):
  """The default experiment with `config.<section>.name = name` and exactly `keys` set in it (the
  default experiment's schedule arguments removed)."""
  config = load(f"{section}.name='{name}'")
  with config[section].unlocked():
    if section == "schedule":
      del config.schedule["warmup_epochs"]
    for key, value in keys.items():
      config[section][key] = value
  return config


@pytest.mark.parametrize(
  "name, key, value, words",
  [
    ("cosine", "warmup_epochs", -5.0, "must be 0 or more"),
    ("constant", "warmup_epochs", -0.5, "must be 0 or more"),
    ("cosine", "end_fraction", -0.1, "must be 0 or more"),
    ("cosine", "end_fraction", math.inf, "not a finite number"),
    ("constant", "warmup_epochs", math.nan, "not a finite number"),
    ("cosine", "warmup_epochs", 1e39, "float32"),
    ("cosine", "warmup_epochs", 3e8, "more than 2**31 - 1 steps"),  # 3e9 steps: not int32.
    ("step", "every_epochs", 0, "must be positive"),
    ("step", "every_epochs", -30, "must be positive"),
    ("step", "every_epochs", 2**31, "2**31 - 1"),
    ("step", "factor", -0.5, "must be positive"),
    ("step", "factor", 0.0, "must be positive"),
    ("step", "factor", -math.inf, "not a finite number"),
    ("cosine", "warmup_epochs", "abc", "must be a number"),
    ("constant", "warmup_epochs", True, "must be a number"),
  ],
)
def test_an_impossible_schedule_argument_names_the_key(name, key, value, words):
  config = _config_with("schedule", name, **{key: value})
  with pytest.raises(ConfigError, match=f"^config.schedule.{key}: ") as e:
    optim.build_optimizer(config, total_steps=100, steps_per_epoch=STEPS_PER_EPOCH)
  assert words in str(e.value)


@pytest.mark.parametrize(
  "name, key, value, words",
  [
    ("sgd", "momentum", -0.9, "must be 0 or more"),
    ("sgd", "momentum", math.nan, "not a finite number"),
    ("adamw", "weight_decay", -1e-4, "must be 0 or more"),
    ("adamw", "weight_decay", math.inf, "not a finite number"),
    ("adam", "b1", -0.1, "must be 0 or more"),
    ("adam", "eps", math.inf, "not a finite number"),
    ("rmsprop", "decay", -1.0, "must be 0 or more"),
    ("lion", "b2", 1e39, "float32"),
    ("lamb", "weight_decay", 10**30, "2**31 - 1"),
  ],
)
def test_an_impossible_optimizer_argument_names_the_key(name, key, value, words):
  config = _config_with("optimizer", name, **{key: value})
  with pytest.raises(ConfigError, match=f"^config.optimizer.{key}: ") as e:
    optim.build_optimizer(config, total_steps=100, steps_per_epoch=STEPS_PER_EPOCH)
  assert words in str(e.value)


@pytest.mark.parametrize("value", [math.inf, math.nan, -0.1, 0.0, 1e39])
def test_build_optimizer_refuses_an_impossible_learning_rate_without_validate(value):
  # `run.py cost` builds the optimizer of a config that config.validate() never sees.
  config = load()
  config.optimizer.learning_rate = value
  with pytest.raises(ConfigError, match="^config.optimizer.learning_rate: must be a positive"):
    optim.build_optimizer(config, total_steps=100, steps_per_epoch=STEPS_PER_EPOCH)


def test_a_run_of_more_steps_than_int32_counts_names_the_number_of_epochs():
  with pytest.raises(ConfigError, match=r"^config.train.num_epochs: makes 2147483648 steps"):
    optim.build_optimizer(load(), total_steps=2**31, steps_per_epoch=2**21)


def test_zero_and_flag_arguments_are_accepted():
  config = _config_with("optimizer", "sgd", momentum=0.0, nesterov=True)
  with config.schedule.unlocked():
    config.schedule.end_fraction = 0.0
    config.schedule.warmup_epochs = 0.0
  optimizer, schedule = optim.build_optimizer(config, 2**31 - 1, STEPS_PER_EPOCH)
  assert float(schedule(0)) == pytest.approx(3e-3) and optimizer is not None
