"""Checkpoints without training: the save policy, checksums, quarantine, keeping the best, config
checks, the lock, and the Orbax names they rely on."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.errors import CheckpointError, ConfigError
from research.training import checkpoint, integrity, lock, resume

from support import DEFAULT, ROOT

STATE = {
  "w": jnp.arange(512, dtype=jnp.float32).reshape(16, 32),
  "b": jnp.ones(7, jnp.float32),
  "count": jnp.array(3, jnp.int32),
}


def _policy(keep=3, keep_best=1):
  return ml_collections.ConfigDict(
    {
      "keep_checkpoints": keep,
      "keep_best": keep_best,
      "best_metric": "test_accuracy",
      "best_mode": "max",
    }
  )


def _save(workdir, accuracies, keep=3, keep_best=1, first=1):
  """Saves steps first, first+1, ... with these test accuracies (None: a mid-epoch save, no
  metrics)."""
  manager = checkpoint.make_manager(str(workdir), _policy(keep, keep_best))
  for step, accuracy in enumerate(accuracies, start=first):
    metrics = None if accuracy is None else {"test_accuracy": accuracy}
    checkpoint.save(manager, step, STATE, {"step": step}, metrics)
  manager.wait_until_finished()
  manager.close()


def _step(workdir, step):
  return os.path.join(checkpoint.directory(str(workdir)), str(step))


def _largest_file(path):
  files = [os.path.join(r, n) for r, _, names in os.walk(path) for n in names]
  return max(files, key=os.path.getsize)


def test_policy_saves_every_n_steps_every_n_epochs_and_always_the_last_step():
  def saved(every_steps, every_epochs):  # 10 steps per epoch, 40 in all.
    return [s for s in range(1, 41) if checkpoint.due(s, 10, 40, every_steps, every_epochs)]

  assert saved(0, 1) == [10, 20, 30, 40]
  assert saved(0, 3) == [30, 40]
  assert saved(15, 0) == [15, 30, 40]
  assert saved(15, 2) == [15, 20, 30, 40]
  assert saved(0, 0) == [40]


@pytest.mark.parametrize(
  "override, key",
  [
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps"),
    ("train.checkpoint_every_epochs=-2", "train.checkpoint_every_epochs"),
    ("train.keep_best=-1", "train.keep_best"),
    ("train.best_metric='accuracy'", "train.best_metric"),
    ("train.best_mode='highest'", "train.best_mode"),
  ],
)
def test_an_impossible_checkpoint_policy_names_the_key(override, key):
  config = config_lib.load_config(DEFAULT)
  config_lib.apply_overrides(config, [override])
  with pytest.raises(ConfigError, match=f"^config.{key}: must be"):
    config_lib.validate(config)


def test_a_saved_step_passes_verification_and_restores_exactly(tmp_path):
  _save(tmp_path, [0.5])
  assert integrity.verify(_step(tmp_path, 1)) is None
  state, meta = checkpoint.restore(str(tmp_path), 1)
  assert meta == {"step": 1}
  for key, value in STATE.items():
    np.testing.assert_array_equal(state[key], value)
    assert state[key].dtype == value.dtype


@pytest.mark.parametrize(
  "damage, words",
  [
    ("flip", "does not match its checksum"),
    ("truncate", "bytes where"),
    ("delete:state/manifest.ocdbt", "state/manifest.ocdbt is missing"),
    ("delete:_CHECKPOINT_METADATA", "_CHECKPOINT_METADATA is missing"),
    ("delete:checksums.json", "it has no checksums.json"),
    ("garble:_CHECKPOINT_METADATA", "its metadata is damaged"),
  ],
)
def test_verification_names_what_is_wrong(tmp_path, damage, words):
  _save(tmp_path, [0.5])
  path = _step(tmp_path, 1)
  if damage in (
    "flip",
    "truncate",
  ):  # The largest file holds the array bytes, which Orbax restores unchecked.
    target = _largest_file(os.path.join(path, "state"))
    data = bytearray(open(target, "rb").read())
    if damage == "flip":
      data[len(data) // 2] ^= 0xFF
    with open(target, "wb") as f:
      f.write(data if damage == "flip" else data[: len(data) // 2])
  else:
    action, name = damage.split(":")
    if action == "delete":
      os.remove(os.path.join(path, name))
    else:
      with open(os.path.join(path, name), "w") as f:
        f.write("{not json")
  reason = integrity.verify(path)
  assert reason is not None and words in reason


def test_corrupt_newest_steps_are_quarantined_and_the_newest_valid_step_is_used(tmp_path, caplog):
  _save(tmp_path, [0.1, 0.2, 0.3], keep=3, keep_best=0)
  os.remove(os.path.join(_step(tmp_path, 3), "commit_success.txt"))
  with open(_largest_file(os.path.join(_step(tmp_path, 2), "state")), "ab") as f:
    f.write(b"\0")
  caplog.clear()
  assert integrity.latest_valid(str(tmp_path), quarantine=True) == 1
  messages = [r.getMessage() for r in caplog.records if r.name == integrity.__name__]
  assert integrity.steps(str(tmp_path)) == [1]
  quarantine = tmp_path / integrity.QUARANTINE
  assert sorted(os.listdir(quarantine)) == ["2", "2.reason.txt", "3", "3.reason.txt"]
  assert "commit_success.txt is missing" in (quarantine / "3.reason.txt").read_text()
  assert [m.split(":")[0] for m in messages] == ["warning"] * 2
  assert (
    f"checkpoint {_step(tmp_path, 3)} is corrupt" in messages[0]
    and str(quarantine / "3") in messages[0]
  )


def test_no_valid_step_is_an_error_that_names_each_and_moves_nothing(tmp_path):
  _save(tmp_path, [0.1, 0.2], keep_best=0)
  for step in (1, 2):
    os.remove(os.path.join(_step(tmp_path, step), integrity.CHECKSUMS))
  with pytest.raises(
    CheckpointError, match="^no valid checkpoint in .*step 2: .*step 1: .*Nothing was moved"
  ):
    integrity.latest_valid(str(tmp_path), quarantine=True)
  assert integrity.steps(str(tmp_path)) == [1, 2] and not (tmp_path / integrity.QUARANTINE).exists()


def test_no_step_at_all_is_a_fresh_start(tmp_path):
  assert integrity.latest_valid(str(tmp_path), quarantine=True) is None


def test_unfinished_saves_are_removed_and_do_not_count(tmp_path):
  _save(tmp_path, [0.5])
  os.makedirs(os.path.join(checkpoint.directory(str(tmp_path)), "2" + integrity.TMP_MARK, "state"))
  assert integrity.steps(str(tmp_path)) == [1]
  assert integrity.remove_unfinished(str(tmp_path)) == ["2" + integrity.TMP_MARK]
  assert os.listdir(checkpoint.directory(str(tmp_path))) == ["1"]


def test_the_best_step_is_kept_beside_the_newest_also_after_a_restart(tmp_path):
  # Orbax with max_to_keep and best_fn alone kept only the best and could drop the step just saved.
  _save(tmp_path, [0.5, 0.9, 0.6, 0.7], keep=2)
  assert integrity.steps(str(tmp_path)) == [2, 3, 4]
  _save(
    tmp_path, [0.8, None, None], keep=2, first=5
  )  # A new manager reads the ranks back from disk.
  assert integrity.steps(str(tmp_path)) == [2, 6, 7]
  _save(tmp_path, [0.95], keep=2, first=8)
  assert integrity.steps(str(tmp_path)) == [7, 8]


def test_config_changes_list_every_differing_key():
  saved = {"seed": 0, "model": {"widths": [8, 16], "hidden": 32}, "train": {"num_epochs": 2}}
  current = {
    "seed": 0,
    "model": {"widths": [8, 32], "hidden": 32, "norm": True},
    "train": {"num_epochs": 4},
  }
  assert resume.config_changes(saved, current) == {
    "model.norm": ("<absent>", True),
    "model.widths": ([8, 16], [8, 32]),
    "train.num_epochs": (2, 4),
  }


def test_resuming_refuses_changes_of_model_optimizer_and_data_order_naming_the_keys():
  with pytest.raises(CheckpointError) as e:
    resume.check_resumable(
      {
        "model.widths": ([8, 16], [8, 32]),
        "optimizer.name": ("adam", "sgd"),
        "data.batch_size": (32, 64),
        "seed": (0, 1),
        "train.num_epochs": (2, 4),
      },
      "/w/88",
    )
  message = str(e.value)
  assert message.startswith("checkpoint /w/88 was made with another model, optimizer or data order")
  for key in (
    "config.model.widths [8, 16] -> [8, 32]",
    "config.optimizer.name 'adam' -> 'sgd'",
    "config.data.batch_size 32 -> 64",
    "config.seed 0 -> 1",
  ):
    assert key in message
  assert "num_epochs" not in message
  resume.check_resumable(
    {
      "optimizer.learning_rate": (3e-3, 1e-3),
      "train.num_epochs": (2, 4),
      "schedule.name": ("cosine", "constant"),
      "data.data_dir": (None, "/d"),
    },
    "/w/88",
  )


def test_a_live_lock_refuses_a_second_run_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from research.training import lock\n"
      f"with lock.hold({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(60)",
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(
      CheckpointError, match=f"^workdir {tmp_path} is in use by another run \\(pid {holder.pid} "
    ):
      with lock.hold(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert (tmp_path / lock.LOCK_FILE).exists()  # A killed holder cleans nothing up.
  caplog.clear()
  with lock.hold(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in (tmp_path / lock.LOCK_FILE).read_text()
  messages = [r.getMessage() for r in caplog.records if r.name == lock.__name__]
  assert len(messages) == 1 and messages[0].endswith("; that run is gone).")
  assert messages[0].startswith(f"Took over the stale lock of {tmp_path} (pid {holder.pid} on ")
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_orbax_still_writes_the_on_disk_names_this_module_depends_on(tmp_path):
  """integrity.py reads three names of Orbax's private on-disk format (pyproject.toml bounds the
  version). A save is watched from inside Orbax's commit (the `on_commit` hook, called just before
  `seal`, only when it finds the one step directory being written) and after it."""
  import orbax.checkpoint as ocp

  pending_at_commit = []
  root = checkpoint.directory(str(tmp_path))
  watched = checkpoint.make_manager(
    str(tmp_path), _policy(3, 1), on_commit=lambda step: pending_at_commit.append(os.listdir(root))
  )
  checkpoint.save(watched, 1, STATE, {"step": 1}, {"test_accuracy": 0.5})
  watched.wait_until_finished()
  watched.close()
  changed = f"Orbax's on-disk format changed (orbax-checkpoint {ocp.__version__}): "
  fix = "; update research/training/integrity.py and the orbax-checkpoint bound in pyproject.toml"
  assert len(pending_at_commit) == 1 and any(
    integrity.TMP_MARK in name for name in pending_at_commit[0]
  ), f"{changed}no step directory named *{integrity.TMP_MARK}* while committing{fix}"
  for name in (integrity.ORBAX_METADATA, integrity.ORBAX_COMMIT):
    assert os.path.isfile(os.path.join(_step(tmp_path, 1), name)), f"{changed}no {name}{fix}"
  assert integrity.verify(_step(tmp_path, 1)) is None


def _rewrite_manifest(path, keep):
  """Rewrites the step's checksums.json keeping only the entries for which `keep(rel)` holds."""
  manifest = os.path.join(path, integrity.CHECKSUMS)
  with open(manifest) as f:
    files = json.load(f)["files"]
  with open(manifest, "w") as f:
    json.dump({"files": {rel: v for rel, v in files.items() if keep(rel)}}, f)


@pytest.mark.parametrize(
  "damage, words",
  [
    ("unlisted", "state/stray.bin is not in checksums.json"),
    ("empty", "its checksums.json lists no file"),
    ("no state", "its checksums.json lists no file under state/"),
    ("no meta", "its checksums.json lists no file under meta/"),
  ],
)
def test_the_checksums_must_list_exactly_the_files_on_disk(tmp_path, damage, words):
  # Before: a file added to a step, or a manifest that lists nothing (or drops a whole item along
  # with its files), verified as sound.
  _save(tmp_path, [0.5])
  path = _step(tmp_path, 1)
  if damage == "unlisted":
    with open(os.path.join(path, "state", "stray.bin"), "wb") as f:
      f.write(b"not written by Orbax")
  elif damage == "empty":
    _rewrite_manifest(path, lambda rel: False)
  else:  # The item's files and their entries both gone: what is on disk matches what is listed.
    item = damage.split()[1]
    shutil.rmtree(os.path.join(path, item))
    _rewrite_manifest(path, lambda rel: not rel.startswith(item + "/"))
  reason = integrity.verify(path)
  assert reason is not None and words in reason


def test_seal_refuses_a_save_without_state_or_meta(tmp_path):
  pending = tmp_path / f"1{integrity.TMP_MARK}-0"
  (pending / "meta").mkdir(parents=True)
  (pending / "meta" / "metadata").write_text("{}")
  with pytest.raises(CheckpointError, match="lists no file under state/"):
    integrity.seal(str(tmp_path))
  assert not (pending / integrity.CHECKSUMS).exists()


@pytest.mark.parametrize("name", ["2", f"3{integrity.TMP_MARK}-1700000000"])
def test_a_file_at_a_steps_path_is_quarantined_before_a_save_can_delete_it(tmp_path, caplog, name):
  # Before: the file stayed (steps() skips it) and Orbax deleted it when it saved that step; one
  # named as an unfinished save made the resume fail (rmtree on a file).
  _save(tmp_path, [0.5])
  stray = os.path.join(checkpoint.directory(str(tmp_path)), name)
  with open(stray, "wb") as f:
    f.write(b"someone's notes")
  caplog.clear()
  # What resume.resume does.
  assert integrity.remove_unfinished(str(tmp_path)) == []
  step, _, meta = checkpoint.restore_newest(str(tmp_path), STATE)
  assert (step, meta) == (1, {"step": 1})
  moved = tmp_path / integrity.QUARANTINE / name
  assert not os.path.lexists(stray) and moved.read_bytes() == b"someone's notes"
  assert "it is a file, not" in (tmp_path / integrity.QUARANTINE / f"{name}.reason.txt").read_text()
  messages = [r.getMessage() for r in caplog.records if r.name == integrity.__name__]
  assert len(messages) == 1 and messages[0].startswith(f"warning: checkpoint {stray} is corrupt: ")
  assert f"Moved it to {moved} " in messages[0]
  _save(tmp_path, [0.6], first=2)  # Saving step 2 now loses nothing.
  assert integrity.steps(str(tmp_path)) == [1, 2] and moved.read_bytes() == b"someone's notes"
