"""`python run.py eval --step=N`: it verifies the checkpoint's checksums first and changes
nothing in the workdir, whether the checkpoint is sound or corrupt."""

import json
import shutil

import pytest

from research.training import integrity, metrics, train

import run
from support import load

SMALL = (
  "model.widths=(8,16)",
  "model.hidden=32",
  "train.num_epochs=2",
  "train.checkpoint_every_epochs=1",
)


def _snapshot(workdir) -> dict[str, tuple[bytes, int]]:
  """Every file under `workdir`: relative path -> (bytes, mtime in ns). Directories count by the
  files they hold; a moved, added, removed, rewritten or merely touched file changes it."""
  return {
    str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
    for p in sorted(workdir.rglob("*"))
    if p.is_file()
  }


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """A finished 2-epoch run: checkpoints at steps 44 and 88 (1437 // 32 = 44 steps per epoch)."""
  path = tmp_path_factory.mktemp("finished")
  train.train_and_evaluate(load(f"data.data_dir={data_dir}", *SMALL), str(path))
  assert integrity.steps(str(path)) == [44, 88]
  return path


@pytest.fixture
def workdir(finished, tmp_path):
  """A copy of the finished run's workdir, for this test alone."""
  shutil.copytree(finished, tmp_path / "run")
  return tmp_path / "run"


def test_eval_of_a_sound_checkpoint_prints_its_metrics_and_changes_nothing(workdir, capsys):
  before = _snapshot(workdir)
  capsys.readouterr()
  assert run.main(["eval", f"--workdir={workdir}", "--step=44"]) == 0
  result = json.loads(capsys.readouterr().out.splitlines()[-1])
  first_epoch = metrics.read(str(workdir))[0]  # What the run measured at step 44.
  assert (result["step"], result["test_loss"], result["test_accuracy"]) == (
    44,
    first_epoch["test_loss"],
    first_epoch["test_accuracy"],
  )
  assert _snapshot(workdir) == before


def test_eval_of_a_corrupt_checkpoint_is_one_error_line_and_moves_nothing(workdir, capsys):
  # Step 88, the other saved step than the one evaluated above.
  state_dir = workdir / "checkpoints" / "88" / "state"
  target = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  damaged = bytearray(target.read_bytes())
  damaged[len(damaged) // 2] ^= 0xFF  # Same size, other bytes: only the checksum can tell.
  target.write_bytes(damaged)
  before = _snapshot(workdir)  # The flipped byte included.
  capsys.readouterr()
  assert run.main(["eval", f"--workdir={workdir}", "--step=88"]) == 2
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert len(lines) == 1 and captured.out == "", captured
  assert lines[0].startswith(f"error: checkpoint {workdir}/checkpoints/88 is corrupt: ")
  assert str(target.relative_to(state_dir.parent)) in lines[0]
  assert _snapshot(workdir) == before  # Nothing quarantined, moved or rewritten.
  assert not (workdir / integrity.QUARANTINE).exists()
  assert integrity.steps(str(workdir)) == [44, 88]
