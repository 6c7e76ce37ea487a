"""Training end to end on the embedded digits: outputs, determinism, resume and data parallelism."""

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from research import metrics, train

FIELDS = {"step", "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate"}


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_training_writes_metrics_config_tensorboard_and_keeps_the_last_three_and_the_best_checkpoints(
    make_config, tmp_path):
  config = make_config("train.num_epochs=5", "model.name='cnn'")
  record = train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read(str(tmp_path))
  assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
  assert [r["step"] for r in records] == [44, 88, 132, 176, 220]  # 1437 // 32 = 44 steps per epoch.
  assert all(set(r) == FIELDS for r in records) and records[-1] == record
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert json.load(open(tmp_path / "config.json")) == json.loads(config.to_json())
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  best = max(records, key=lambda r: (r["test_accuracy"], r["step"]))["step"]  # Ties: the later step.
  assert _checkpoint_steps(tmp_path) == sorted({132, 176, 220, best})


def test_same_config_and_seed_give_identical_metrics(make_config, tmp_path):
  for name in ("a", "b"):
    train.train_and_evaluate(make_config("train.num_epochs=2"), str(tmp_path / name))
  assert metrics.read(str(tmp_path / "a")) == metrics.read(str(tmp_path / "b"))
  train.train_and_evaluate(make_config("train.num_epochs=2", "seed=1"), str(tmp_path / "c"))
  assert metrics.read(str(tmp_path / "c")) != metrics.read(str(tmp_path / "a"))


def test_rerun_on_a_workdir_resumes_and_matches_an_uninterrupted_run(make_config, tmp_path, capsys):
  constant = ("schedule.name='constant'",)  # A cosine schedule depends on the total, so it changes with it.
  train.train_and_evaluate(make_config("train.num_epochs=4", *constant), str(tmp_path / "straight"))
  train.train_and_evaluate(make_config("train.num_epochs=2", *constant), str(tmp_path / "resumed"))
  capsys.readouterr()
  train.train_and_evaluate(make_config("train.num_epochs=4", *constant), str(tmp_path / "resumed"))
  out = capsys.readouterr().out
  assert "Resuming from the checkpoint at step 88 (epoch 2)" in out
  assert "epoch    1 " not in out and "epoch    3 " in out
  assert metrics.read(str(tmp_path / "resumed")) == metrics.read(str(tmp_path / "straight"))


def test_rerun_of_a_finished_run_trains_nothing(make_config, tmp_path, capsys):
  config = make_config("train.num_epochs=1")
  first = train.train_and_evaluate(config, str(tmp_path))
  capsys.readouterr()
  assert train.train_and_evaluate(config, str(tmp_path)) == first
  out = capsys.readouterr().out
  assert "Resuming from the checkpoint at step 44 (epoch 1)" in out and "epoch    1 " not in out
  assert len(metrics.read(str(tmp_path))) == 1


def test_data_parallel_over_two_devices_matches_one_device(data_dir, tmp_path):
  args = ("train", f"--config.data.data_dir={data_dir}", "--config.train.num_epochs=2")
  one = run_cli(*args, f"--workdir={tmp_path / 'one'}")
  two = run_cli(*args, f"--workdir={tmp_path / 'two'}",
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
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
  result = run_cli("train", f"--workdir={tmp_path / 'run'}", "--config.data.name=mnist",
                   f"--config.data.data_dir={tmp_path / 'empty'}", timeout=60)
  assert result.returncode == 2, result.stderr
  message = result.stderr.strip()
  assert message.startswith("error: TFDS dataset 'mnist' is not prepared in") and "Traceback" not in message
  assert str(tmp_path / "empty") in message and "tfds build mnist" in message
  assert not (tmp_path / "run").exists()
