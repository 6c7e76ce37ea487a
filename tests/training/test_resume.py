"""Exact resume and crash safety: killed runs, corrupt checkpoints, divergence, config changes,
locks, `run.py eval`.

Every run here is the same small one (3 epochs of 44 steps, saves every 20 steps and at each epoch
end: steps 20, 40, 44, 60, 80, 88, 100, 120, 132), compared with one uninterrupted reference run.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from faults import injected

from research import config as config_lib
from research.data import splits
from research.errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from research.training import checkpoint, evaluate, integrity, lock, metrics, resume, train
from research.training.hooks import Hooks
from research.training.plan import make_plan

import run
from support import DEFAULT, RUN, run_cli

SMALL = (
  "model.widths=(8,16)",
  "model.hidden=32",
  "train.num_epochs=3",
  "train.checkpoint_every_epochs=1",
  "train.checkpoint_every_steps=20",
)


def _overrides(data_dir, *more):
  return [f"data.data_dir={data_dir}", *SMALL, *more]


def _config(data_dir, *more):
  config = config_lib.load_config(DEFAULT)
  config_lib.apply_overrides(config, _overrides(data_dir, *more))
  return config


def _state(workdir, step=132):
  return checkpoint.restore(str(workdir), step)[0]


def _assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Environment for subprocesses sharing this module's persistent compilation cache (set here
  in-process too).

  The runs here differ in where they stop, not in what they compile, so each program is compiled
  once; a cached executable computes the same bits as a fresh compilation.
  """
  from jax.experimental.compilation_cache import compilation_cache as cache

  path = str(tmp_path_factory.mktemp("jax_cache"))
  options = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0}
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  cache.reset_cache()
  yield {name.upper(): str(value) for name, value in options.items()}
  for name, value in previous.items():
    jax.config.update(name, value)
  cache.reset_cache()


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The workdir of the uninterrupted run."""
  workdir = tmp_path_factory.mktemp("reference")
  train.train_and_evaluate(_config(data_dir), str(workdir))
  assert integrity.steps(str(workdir)) == [100, 120, 132]
  return workdir


@pytest.fixture
def copy_of_reference(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  return workdir


@pytest.mark.parametrize(
  "fault, resumes_at",
  [
    ("kill@step:70", 60),  # Mid-epoch, between two saves.
    ("kill@save:80", 60),  # An async save half written.
    ("kill@commit:100", 88),  # A save written but not yet committed.
  ],
)
def test_a_killed_run_resumes_to_bitwise_the_parameters_of_an_uninterrupted_one(
  reference, compilation_cache, data_dir, tmp_path, caplog, fault, resumes_at
):
  workdir = tmp_path / "run"
  killed = run_cli(
    "train",
    f"--workdir={workdir}",
    *(f"--config.{o}" for o in _overrides(data_dir)),
    env=compilation_cache,
    fault=fault,
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  train.train_and_evaluate(_config(data_dir), str(workdir))
  out = caplog.text
  assert f"Took over the stale lock of {workdir}" in out
  assert f"Resuming from the checkpoint at step {resumes_at} " in out
  if fault.startswith("kill@commit"):
    assert (
      f"Removed 1 unfinished save(s) that an interrupted run left in {workdir}/checkpoints: 100"
      in out
    )
  assert sorted(os.listdir(workdir / "checkpoints")) == ["100", "120", "132"]
  _assert_bitwise_equal(_state(workdir), _state(reference))
  assert metrics.read(str(workdir)) == metrics.read(str(reference))


def test_sigterm_saves_where_the_run_is_and_stops_and_a_rerun_ends_bitwise_the_same(
  reference, data_dir, tmp_path, caplog
):
  workdir = tmp_path / "run"
  with (
    injected("term@step:110"),
    pytest.raises(Interrupted) as e,
  ):  # A real SIGTERM, step 110.
    train.train_and_evaluate(_config(data_dir), str(workdir))
  assert str(e.value) == (
    f"stopped by SIGTERM at step 110 after saving it in {workdir}/checkpoints; rerun the same "
    "command to resume"
  )
  assert integrity.latest_valid(str(workdir), quarantine=False) == 110
  train.train_and_evaluate(_config(data_dir), str(workdir))
  assert "Resuming from the checkpoint at step 110 (epoch 2, step 22 of 44)" in caplog.text
  _assert_bitwise_equal(_state(workdir), _state(reference))
  assert metrics.read(str(workdir)) == metrics.read(str(reference))


def test_a_corrupt_latest_checkpoint_is_set_aside_and_training_falls_back_to_the_newest_valid_one(
  reference, copy_of_reference, data_dir, caplog
):
  workdir = copy_of_reference
  state_dir = workdir / "checkpoints" / "132" / "state"
  target = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  damaged = bytearray(target.read_bytes())
  damaged[len(damaged) // 2] ^= (
    0x01  # One flipped bit: Orbax alone would restore it without a word.
  )
  target.write_bytes(damaged)
  train.train_and_evaluate(_config(data_dir), str(workdir))
  out = caplog.text
  relative = target.relative_to(state_dir.parent)
  assert (
    f"warning: checkpoint {workdir}/checkpoints/132 is corrupt: {relative} does not match its "
    "checksum (its "
    f"bytes changed after it was written). Moved it to {workdir}/quarantine/132 for inspection; "
    "falling back "
    "to step 120."
  ) in out
  assert "Resuming from the checkpoint at step 120 (epoch 2, step 32 of 44)" in out
  assert (workdir / "quarantine" / "132" / relative).read_bytes() == bytes(damaged)
  _assert_bitwise_equal(_state(workdir), _state(reference))
  assert metrics.read(str(workdir)) == metrics.read(str(reference))


def test_no_valid_checkpoint_is_a_clear_error_with_exit_code_2_and_moves_nothing(
  copy_of_reference, data_dir, capsys
):
  workdir = copy_of_reference
  for step in (100, 120, 132):
    os.remove(workdir / "checkpoints" / str(step) / "commit_success.txt")
  assert (
    run.main(["train", f"--workdir={workdir}", *(f"--config.{o}" for o in _overrides(data_dir))])
    == 2
  )
  err = capsys.readouterr().err
  assert err == (
    f"error: no valid checkpoint in {workdir}/checkpoints: step 132: commit_success.txt is "
    "missing; "
    "step 120: commit_success.txt is missing; step 100: commit_success.txt is missing. Nothing was "
    "moved. To start this run afresh, move that directory away (or train into a new --workdir).\n"
  )
  assert integrity.steps(str(workdir)) == [100, 120, 132] and not (workdir / "quarantine").exists()


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint_stays_the_latest(
  reference, copy_of_reference, data_dir
):
  workdir = copy_of_reference
  with pytest.raises(TrainingDiverged) as e:
    train.train_and_evaluate(
      _config(data_dir, "train.num_epochs=4", "optimizer.learning_rate=1e30"), str(workdir)
    )
  assert str(e.value) == (
    "training diverged: the loss is nan at step 134 (epoch 4); stopped without saving, and the "
    "latest checkpoint, "
    f"step 132 in {workdir}/checkpoints, is the last good one and stays the latest. Lower "
    "config.optimizer.learning_rate (now 1e+30) or change what made it diverge, then rerun to "
    "continue from there."
  )
  assert integrity.latest_valid(str(workdir), quarantine=False) == 132
  assert integrity.steps(str(workdir)) == [100, 120, 132]
  _assert_bitwise_equal(_state(workdir), _state(reference))
  assert metrics.read(str(workdir)) == metrics.read(str(reference))


def test_resuming_with_another_model_or_optimizer_is_refused_naming_the_keys(
  copy_of_reference, data_dir
):
  workdir = copy_of_reference
  config_json = (workdir / "config.json").read_text()
  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(
      _config(data_dir, "model.widths=(8,32)", "optimizer.name='sgd'"), str(workdir)
    )
  assert str(e.value) == (
    f"checkpoint {workdir}/checkpoints/132 was made with another model, optimizer or data order "
    "than this config "
    "asks for: config.model.widths [8, 16] -> [8, 32], config.optimizer.name 'adam' -> 'sgd'. "
    "Resume with the "
    "values it was made with, or train into a new --workdir."
  )
  assert (workdir / "config.json").read_text() == config_json
  assert not (workdir / resume.CONFIG_CHANGES_FILE).exists()


def test_more_epochs_on_resume_are_allowed_and_recorded(
  reference, copy_of_reference, data_dir, caplog
):
  workdir = copy_of_reference
  train.train_and_evaluate(_config(data_dir, "train.num_epochs=4"), str(workdir))
  assert (
    "Config changes since step 132 (allowed; recorded in config_changes.jsonl): "
    "config.train.num_epochs 3 -> 4."
  ) in caplog.text
  changes = (workdir / resume.CONFIG_CHANGES_FILE).read_text().splitlines()
  assert [json.loads(line) for line in changes] == [
    {"step": 132, "changes": {"train.num_epochs": [3, 4]}}
  ]
  assert metrics.read(str(workdir))[:3] == metrics.read(str(reference))
  assert [r["epoch"] for r in metrics.read(str(workdir))] == [1, 2, 3, 4]


def _numpy_test_metrics(config, params) -> tuple[float, float]:
  """(loss, accuracy) over the whole test split at once: the model's logits, then NumPy
  (float64)."""
  plan = make_plan(config)
  train_split, test = splits.load(config)
  images = splits.normalize(test.images, splits.normalizer(train_split, plan.dataset.pixel_max))
  logits = np.asarray(plan.model.apply({"params": params}, images), np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  loss = np.mean(log_z - logits[np.arange(len(test.labels)), test.labels])
  return float(loss), float(np.mean(np.argmax(logits, -1) == test.labels))


def test_eval_prints_the_test_metrics_of_a_checkpoint(reference, data_dir, capsys):
  last = metrics.read(str(reference))[-1]
  loss, accuracy = _numpy_test_metrics(_config(data_dir), _state(reference)["params"])
  assert (last["test_loss"], last["test_accuracy"]) == (
    pytest.approx(loss, rel=1e-5),
    pytest.approx(accuracy, abs=1e-7),
  )
  assert run.main(["eval", f"--workdir={reference}"]) == 0
  words, as_json = capsys.readouterr().out.splitlines()
  assert json.loads(as_json) == {
    "step": 132,
    "epoch": 3,
    "batch_in_epoch": 0,
    "test_loss": last["test_loss"],
    "test_accuracy": last["test_accuracy"],
  }
  assert words == (
    f"checkpoint 132 (after 3 epochs) in {reference}/checkpoints: test_loss "
    f"{last['test_loss']:.4f}  "
    f"test_accuracy {100 * last['test_accuracy']:.2f}%"
  )
  assert run.main(["eval", f"--workdir={reference}", "--step=100"]) == 0
  assert capsys.readouterr().out.startswith(
    f"checkpoint 100 (after 2 epochs and 12 steps) in {reference}/"
  )
  assert run.main(["eval", f"--workdir={reference}", "--step=7"]) == 2
  assert capsys.readouterr().err == (
    f"error: no checkpoint of step 7 in {reference}/checkpoints; it holds steps 100, 120, 132\n"
  )


def test_a_second_run_on_a_workdir_in_use_is_refused_with_exit_code_2(data_dir, tmp_path, capsys):
  with lock.hold(str(tmp_path)):
    assert (
      run.main(["train", f"--workdir={tmp_path}", *(f"--config.{o}" for o in _overrides(data_dir))])
      == 2
    )
  assert capsys.readouterr().err.startswith(
    f"error: workdir {tmp_path} is in use by another run (pid {os.getpid()} on "
  )
  assert os.listdir(tmp_path) == []


def _reseal(step_dir):
  """Rewrites `checksums.json` for the step's current files: damage that passes the checksums."""
  with open(step_dir / integrity.CHECKSUMS, "w") as f:
    json.dump({"files": integrity._digests(str(step_dir))}, f)


@pytest.mark.parametrize(
  "damage",
  [
    "meta",  # Garbage metadata, re-checksummed.
    "state_metadata",  # An empty _METADATA of the state, re-checksummed.
    "state_data",  # Corrupt compressed data, re-checksummed.
  ],
)
def test_a_checkpoint_that_passes_its_checksums_but_does_not_restore_is_quarantined(
  reference, copy_of_reference, data_dir, caplog, damage
):
  workdir = copy_of_reference
  step_dir = workdir / "checkpoints" / "132"
  if damage == "meta":
    target = next(p for p in (step_dir / "meta").rglob("*") if p.is_file())
    target.write_text("{not json")
  elif damage == "state_metadata":
    target = step_dir / "state" / "_METADATA"
    target.write_bytes(b"")
  else:  # The largest data file cut in half.
    target = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=os.path.getsize)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  _reseal(step_dir)
  train.train_and_evaluate(_config(data_dir), str(workdir))
  [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
               and r.name.startswith("research")]  # fmt: skip
  assert warning.startswith(
    f"warning: checkpoint {step_dir} is corrupt: it passed its checksums but could not be "
    "restored ("
  )
  assert "\n" not in warning and "falling back to step 120." in warning
  assert (workdir / "quarantine" / "132").is_dir()
  assert "Resuming from the checkpoint at step 120 (epoch 2, step 32 of 44)" in caplog.text
  _assert_bitwise_equal(_state(workdir), _state(reference))


def test_when_no_checkpoint_restores_the_run_stops_naming_each_and_moves_nothing(
  copy_of_reference, data_dir
):
  workdir = copy_of_reference
  for step in (100, 120, 132):
    step_dir = workdir / "checkpoints" / str(step)
    (step_dir / "state" / "_METADATA").write_bytes(b"")
    _reseal(step_dir)
  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(_config(data_dir), str(workdir))
  message = str(e.value)
  assert message.startswith(f"no checkpoint restores in {workdir}/checkpoints: step 132: ")
  assert "; step 120: " in message and "; step 100: " in message and "\n" not in message
  assert integrity.steps(str(workdir)) == [100, 120, 132] and not (workdir / "quarantine").exists()


def _deleting_the_first_read(monkeypatch):
  """`checkpoint.snapshot` that deletes the step it is asked for before copying it, once: what a
  live run's keep policy does to an `eval` beside it, at the worst moment."""
  original = checkpoint.snapshot
  deleted = []

  def snapshot(workdir, step, into):
    if not deleted:
      shutil.rmtree(os.path.join(checkpoint.directory(workdir), str(step)))
      deleted.append(step)
    return original(workdir, step, into)

  monkeypatch.setattr(checkpoint, "snapshot", snapshot)
  return deleted


def test_eval_beside_a_live_run_takes_the_new_newest_step_when_its_step_is_deleted(
  copy_of_reference, monkeypatch, caplog
):
  deleted = _deleting_the_first_read(monkeypatch)
  result = evaluate.evaluate_checkpoint(str(copy_of_reference))
  assert deleted == [132] and result["step"] == 120
  assert (
    f"checkpoint {copy_of_reference}/checkpoints/132 was deleted while it was read" in caplog.text
  )
  assert "passed its checksums" not in caplog.text and "new --workdir" not in caplog.text


def test_eval_of_a_step_deleted_while_read_says_so_in_one_line(copy_of_reference, monkeypatch):
  _deleting_the_first_read(monkeypatch)
  with pytest.raises(CheckpointError) as e:
    evaluate.evaluate_checkpoint(str(copy_of_reference), step=120)
  message = str(e.value)
  assert message.startswith(f"checkpoint {copy_of_reference}/checkpoints/120 was deleted while it")
  assert "new --workdir" not in message and "\n" not in message


def test_eval_while_a_run_trains_and_deletes_old_steps_succeeds_every_time(data_dir, tmp_path):
  """A real run beside: a save every 2 steps, only the newest kept."""
  workdir = tmp_path / "live"
  trainer = subprocess.Popen(
    [sys.executable, RUN, "train", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
     "--config.model.widths=(8,16)", "--config.model.hidden=32", "--config.train.num_epochs=4",
     "--config.train.checkpoint_every_steps=2", "--config.train.keep_checkpoints=1",
     "--config.train.keep_best=0"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  try:
    while not integrity.steps(str(workdir)) and trainer.poll() is None:
      time.sleep(0.1)
    results = [evaluate.evaluate_checkpoint(str(workdir)) for _ in range(6)]
  finally:
    trainer.wait(timeout=120)
  assert trainer.returncode == 0 and all(0 <= r["test_accuracy"] <= 1 for r in results)


def test_a_second_ctrl_c_aborts_at_once_and_the_first_saves(data_dir, tmp_path):
  once = run_cli(
    "train", f"--workdir={tmp_path / 'once'}", *(f"--config.{o}" for o in _overrides(data_dir)),
    fault="int@step:30",
  )  # fmt: skip
  assert once.returncode == 3
  assert once.stderr.strip().splitlines()[-1] == (
    f"error: stopped by SIGINT at step 30 after saving it in {tmp_path / 'once'}/checkpoints; "
    "rerun the same command to resume"
  )
  assert 30 in integrity.steps(str(tmp_path / "once"))
  twice = run_cli(
    "train", f"--workdir={tmp_path / 'twice'}", *(f"--config.{o}" for o in _overrides(data_dir)),
    fault="int2@step:30",
  )  # fmt: skip
  assert twice.returncode == 130 and "Traceback" not in twice.stderr
  assert twice.stderr.strip().splitlines()[-1].startswith("error: aborted by Ctrl-C")
  assert 30 not in integrity.steps(str(tmp_path / "twice"))


def test_divergence_exits_with_its_own_code(data_dir, tmp_path):
  result = run_cli(
    "train", f"--workdir={tmp_path}", *(f"--config.{o}" for o in _overrides(data_dir)),
    "--config.optimizer.learning_rate=1e30",
  )  # fmt: skip
  assert result.returncode == 4 and "error: training diverged" in result.stderr


def test_a_save_that_fails_in_the_background_stops_the_run_at_the_next_step(
  reference, data_dir, tmp_path
):
  workdir = tmp_path / "run"

  def full_disk(step):  # Orbax's commit of step 60 finds the disk full.
    if step == 60:
      raise OSError(errno.ENOSPC, "No space left on device")

  def slow_steps(step, wait_for_saves):  # Steps of 50 ms, as on real data, from step 61 on.
    if step > 60:
      time.sleep(0.05)

  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(
      _config(data_dir), str(workdir), hooks=Hooks(on_commit=full_disk, on_step=slow_steps)
    )
  message = str(e.value)
  assert message.startswith(f"saving a checkpoint into {workdir}/checkpoints failed (OSError: ")
  assert "No space left on device" in message and "MiB free there; stopped after step " in message
  stopped = int(message.split("stopped after step ")[1].split(".")[0])
  assert 60 < stopped < 80 and "\n" not in message  # Once the failure is known, not at step 80.
  assert integrity.steps(str(workdir)) == [20, 40, 44]  # 60 never committed; nothing after it.
  assert [r["epoch"] for r in metrics.read(str(workdir))] == [1]  # Stopped within epoch 2.
  train.train_and_evaluate(_config(data_dir), str(workdir))  # Space again: resumes exactly.
  _assert_bitwise_equal(_state(workdir), _state(reference))


def test_resuming_with_fewer_epochs_than_done_is_refused_and_changes_nothing(
  copy_of_reference, data_dir
):
  workdir = copy_of_reference
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and "lock" not in p.name}
  with pytest.raises(
    ConfigError, match=r"^config.train.num_epochs: 2 epochs \(88 steps\) is fewer"
  ):
    train.train_and_evaluate(_config(data_dir, "train.num_epochs=2"), str(workdir))
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and "lock" not in p.name}
  assert after == before  # config.json still describes the run; no config_changes.jsonl.


def test_without_a_terminal_progress_is_logged_periodically(data_dir, tmp_path, caplog):
  every_step = Hooks(progress_seconds=0.0)
  train.train_and_evaluate(_config(data_dir, "train.num_epochs=1"), str(tmp_path), hooks=every_step)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert lines[0].startswith("step 1/44 (2%), ") and lines[-1].startswith("step 44/44 (100%), ")
  assert all("steps/s, about " in line and line.endswith(" min left") for line in lines)
