"""Learning-rate schedules by name: each one's values against its formula, worked out by hand.

A schedule maps the optimizer's update count (0 for the first update) to the learning rate. Every
case uses 10 steps per epoch, so epoch boundaries fall on round steps; expected values are written
out as numbers, not computed by the code under test (optax returns float32, hence `rel=1e-6`).
"""

import math

import pytest

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
