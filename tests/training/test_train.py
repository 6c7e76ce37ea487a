"""Training end to end on the embedded digits: outputs, determinism, resume and data parallelism."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import splits
from research.errors import CheckpointError, TrainingDiverged
from research.training import integrity, metrics, train
from research.training import state as state_lib
from research.training.hooks import Hooks

from support import run_cli

FIELDS = {
  "step",
  "epoch",
  "train_loss",
  "train_accuracy",
  "test_loss",
  "test_accuracy",
  "learning_rate",
}


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_training_writes_metrics_config_tensorboard_and_keeps_the_last_three_and_the_best_steps(
  make_config, tmp_path
):
  config = make_config("train.num_epochs=5", "model.name='cnn'", "train.checkpoint_every_epochs=1")
  record = train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read(str(tmp_path))
  assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
  assert [r["step"] for r in records] == [44, 88, 132, 176, 220]  # 1437 // 32 = 44 steps per epoch.
  assert all(set(r) == FIELDS for r in records) and records[-1] == record
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert json.load(open(tmp_path / "config.json")) == json.loads(config.to_json())
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  best = max(records, key=lambda r: (r["test_accuracy"], r["step"]))[
    "step"
  ]  # Ties: the later step.
  assert _checkpoint_steps(tmp_path) == sorted({132, 176, 220, best})


def test_same_config_and_seed_give_identical_metrics(make_config, tmp_path):
  for name in ("a", "b"):
    train.train_and_evaluate(make_config("train.num_epochs=2"), str(tmp_path / name))
  assert metrics.read(str(tmp_path / "a")) == metrics.read(str(tmp_path / "b"))
  train.train_and_evaluate(make_config("train.num_epochs=2", "seed=1"), str(tmp_path / "c"))
  assert metrics.read(str(tmp_path / "c")) != metrics.read(str(tmp_path / "a"))


def test_rerun_on_a_workdir_resumes_and_matches_an_uninterrupted_run(make_config, tmp_path, caplog):
  # A cosine schedule depends on the total, so it would change with the number of epochs.
  constant = ("schedule.name='constant'",)
  train.train_and_evaluate(make_config("train.num_epochs=4", *constant), str(tmp_path / "straight"))
  train.train_and_evaluate(make_config("train.num_epochs=2", *constant), str(tmp_path / "resumed"))
  caplog.clear()
  train.train_and_evaluate(make_config("train.num_epochs=4", *constant), str(tmp_path / "resumed"))
  out = caplog.text
  assert "Resuming from the checkpoint at step 88 (epoch 2)" in out
  assert "epoch    1 " not in out and "epoch    3 " in out
  assert metrics.read(str(tmp_path / "resumed")) == metrics.read(str(tmp_path / "straight"))


def test_rerun_of_a_finished_run_trains_nothing(make_config, tmp_path, caplog):
  config = make_config("train.num_epochs=1")
  first = train.train_and_evaluate(config, str(tmp_path))
  caplog.clear()
  assert train.train_and_evaluate(config, str(tmp_path)) == first
  out = caplog.text
  assert "Resuming from the checkpoint at step 44 (epoch 1)" in out and "epoch    1 " not in out
  assert len(metrics.read(str(tmp_path))) == 1


def test_data_parallel_over_two_devices_matches_one_device(data_dir, tmp_path):
  args = ("train", f"--config.data.data_dir={data_dir}", "--config.train.num_epochs=2")
  one = run_cli(*args, f"--workdir={tmp_path / 'one'}")
  two = run_cli(
    *args,
    f"--workdir={tmp_path / 'two'}",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  )
  assert one.returncode == 0 and two.returncode == 0, two.stderr
  assert "on 2 cpu device(s)" in two.stdout and "on 1 cpu device(s)" in one.stdout
  a, b = metrics.read(str(tmp_path / "one")), metrics.read(str(tmp_path / "two"))
  for key in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=2e-3, atol=2e-3)


def test_unwritable_workdir_is_a_clear_error(make_config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(Exception, match=f"workdir {blocker}/run is not writable"):
    train.train_and_evaluate(make_config("train.num_epochs=1"), str(blocker / "run"))


def test_run_py_without_arguments_trains_the_default_to_97_percent(data_dir, tmp_path):
  result = run_cli(cwd=str(tmp_path), env={"TFDS_DATA_DIR": data_dir})
  assert result.returncode == 0, result.stderr
  workdir = tmp_path / "workdirs" / "default"
  assert f"Results in {workdir}" in result.stdout
  assert metrics.read(str(workdir))[-1]["test_accuracy"] >= 0.97


def test_unprepared_named_dataset_fails_fast_with_one_sentence(tmp_path):
  result = run_cli(
    "train",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.name=cifar10",
    f"--config.data.data_dir={tmp_path / 'empty'}",
    timeout=60,
  )
  assert result.returncode == 2, result.stderr
  message = result.stderr.strip()
  assert (
    message.startswith("error: TFDS dataset 'cifar10' is not prepared in")
    and "Traceback" not in message
  )
  assert str(tmp_path / "empty") in message and "tfds build cifar10" in message
  assert not (tmp_path / "run").exists()


SMALL = ("model.widths=(8,16)", "model.hidden=32", "train.checkpoint_every_epochs=1")
STEPS_PER_EPOCH = 44  # 1437 training digits // batch 32.


def _tree(path) -> dict[str, bytes]:
  """Every file under `path`: relative path -> bytes."""
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_best_mode_min_keeps_the_step_with_the_smallest_test_loss_besides_the_last(
  make_config, tmp_path
):
  # The learning rate is multiplied by 10 each epoch (0.01, 0.1, 1.0): the model learns in the first
  # two epochs and is wrecked in the third, so the smallest test loss is at neither end and the
  # largest is the last. `max` would keep only the last step; ranking the wrong way, or not at all,
  # keeps another set than {last, argmin}.
  config = make_config(
    *SMALL,
    "train.num_epochs=3",
    "optimizer.learning_rate=0.01",
    "schedule.name='step'",
    "train.keep_checkpoints=1",
    "train.keep_best=1",
    "train.best_metric='test_loss'",
    "train.best_mode='min'",
  )
  with config.schedule.unlocked():
    del config.schedule["warmup_epochs"]
    config.schedule.every_epochs = 1
    config.schedule.factor = 10.0
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read(str(tmp_path))
  assert [r["step"] for r in records] == [44, 88, 132]
  argmin = min(records, key=lambda r: r["test_loss"])["step"]
  assert argmin not in (44, 132), records  # The premise: the best step is neither end.
  assert integrity.steps(str(tmp_path)) == sorted({132, argmin})


def test_non_finite_parameters_with_a_finite_loss_stop_the_run_at_the_save(make_config, tmp_path):
  # The update of step 44, the first save (the end of epoch 1), makes every parameter NaN, while the
  # loss it reports was computed before the update and is finite: only the check of the state
  # before saving can catch it (the loss check would, one step later, after the save).
  def poisoned_steps(states, split, orders):
    outputs = []
    for state, order in zip(states, orders):
      state, step_metrics = state_lib.indexed_train_step(state, split, order)
      poison = state.step == STEPS_PER_EPOCH
      params = jax.tree.map(
        lambda p, poison=poison: jnp.where(poison, p * jnp.nan, p), state.params
      )
      outputs.append((state.replace(params=params), step_metrics))
    return outputs

  with pytest.raises(TrainingDiverged) as e:
    train.train_and_evaluate(
      make_config(*SMALL, "train.num_epochs=2"), str(tmp_path), hooks=Hooks(steps=poisoned_steps)
    )
  assert str(e.value).startswith(
    "training diverged: the parameters or optimizer state are not finite at step 44 (epoch 1); "
    "stopped without saving, and no checkpoint was saved before it."
  )
  assert os.listdir(tmp_path / "checkpoints") == []  # Not step 44, nor anything after it.


def test_resume_is_refused_when_the_dataset_changed_size(make_config, tmp_path, monkeypatch):
  config = make_config(*SMALL, "train.num_epochs=1")
  train.train_and_evaluate(config, str(tmp_path))
  before = _tree(tmp_path)
  assert integrity.steps(str(tmp_path)) == [44]
  # 100 fewer training examples: 1337 // 32 = 41 steps per epoch instead of 44, so the saved data
  # position (epoch 1 done at step 44) would mean other examples.
  real_info = splits.info

  def smaller(config):
    found = real_info(config)
    return dataclasses.replace(found, num_train=found.num_train - 100)

  monkeypatch.setattr(splits, "info", smaller)
  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(e.value) == (
    f"checkpoint 44 in {tmp_path}/checkpoints was saved with 44 steps per epoch and this run has "
    "41: the dataset changed size; train into a new --workdir"
  )
  assert _tree(tmp_path) == before  # The checkpoint, metrics and config, as they were.
