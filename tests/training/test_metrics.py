"""`metrics.jsonl`: a line torn by a crash or a full disk is dropped (the last one only), rewritten
away before the next append, and cannot arise anywhere but at the end."""

import json
import logging
import os

import pytest

from research.errors import CheckpointError
from research.training import metrics

RECORDS = [
  {"step": 11 * i, "epoch": i, "train_loss": 1.0 / i, "test_accuracy": 0.5 + 0.1 * i}
  for i in (1, 2, 3)
]
TIMING = {"epoch_seconds": 0.5, "train_examples_per_second": 100.0}


def write_file(workdir, text: str) -> str:
  path = os.path.join(workdir, metrics.METRICS_FILE)
  with open(path, "w") as f:
    f.write(text)
  return path


def lines_of(records) -> str:
  return "".join(json.dumps(r) + "\n" for r in records)


def full_record(step: int, epoch: int) -> dict:
  return {"step": step, "epoch": epoch, "train_loss": 0.25, "test_loss": 0.5,
          "test_accuracy": 0.75, "learning_rate": 0.001}  # fmt: skip


@pytest.mark.parametrize(
  "torn, size",
  [
    ('{"step": 44, "epo', 17),  # Cut short mid-line: no "\n".
    ('{"step": 44, "epoch": 4}', 24),  # Parses, but its "\n" never reached the file.
    ('{"step": 44, "epo\n', 18),  # Ends with "\n" but does not parse.
    ('{"step": 44, "epo\n\n', 18),  # The same with a blank line after it.
  ],
  ids=["cut-mid-line", "no-newline", "unparsable", "unparsable-then-blank"],
)
def test_a_torn_last_line_is_dropped_with_one_warning(tmp_path, caplog, torn, size):
  path = write_file(tmp_path, lines_of(RECORDS) + torn)
  with caplog.at_level(logging.WARNING, logger=metrics.__name__):
    assert metrics.read(str(tmp_path)) == RECORDS  # The earlier records, exactly.
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  expected = f"dropped the incomplete last line 4 of {path} ({size} bytes): a write was cut short"
  assert warnings[0].getMessage().startswith(expected)


def test_a_complete_file_reads_without_a_warning(tmp_path, caplog):
  write_file(tmp_path, lines_of(RECORDS))
  assert metrics.read(str(tmp_path)) == RECORDS
  assert metrics.read(str(tmp_path / "missing")) == []
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("bad", ['{"step": 22, "epo', "[1, 2]"], ids=["cut", "not-an-object"])
def test_a_bad_line_before_the_last_is_corruption_naming_file_and_line(tmp_path, bad):
  path = write_file(tmp_path, lines_of(RECORDS[:1]) + bad + "\n" + lines_of(RECORDS[2:]))
  with pytest.raises(CheckpointError) as e:
    metrics.read(str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{path} is corrupt: line 2 of 3 is not a JSON record")


@pytest.mark.parametrize("step, kept", [(33, 3), (22, 2)])  # Nothing past the step; one record.
def test_truncate_after_rewrites_the_torn_line_away_and_the_next_record_starts_a_line(
  tmp_path, step, kept
):
  workdir = str(tmp_path)
  path = write_file(tmp_path, lines_of(RECORDS) + '{"step": 44, "epo')
  metrics.truncate_after(workdir, step)
  with open(path) as f:
    text = f.read()
  assert text == lines_of(RECORDS[:kept])
  assert not os.path.exists(path + ".tmp")
  writer = metrics.MetricWriter(workdir)
  writer.write(full_record(step + 11, kept + 1), TIMING)
  writer.close()
  expected = [*RECORDS[:kept], full_record(step + 11, kept + 1)]
  with open(path) as f:
    lines = f.readlines()
  assert len(lines) == kept + 1 and all(line.endswith("\n") for line in lines)
  assert [json.loads(line) for line in lines] == expected
  assert metrics.read(workdir) == expected


class CountingFile:
  """A file object that records each call of its `write()` in `calls`."""

  def __init__(self, f, calls: list):
    self._f, self._calls = f, calls

  def write(self, text):
    self._calls.append(("write", text))
    return self._f.write(text)

  def __getattr__(self, name):
    return getattr(self._f, name)


def test_each_record_is_one_write_of_its_whole_line_then_fsynced(tmp_path, monkeypatch):
  calls, fds = [], set()
  path = os.path.join(tmp_path, metrics.METRICS_FILE)
  real_open, real_fsync = open, os.fsync

  def counting_open(*args, **kwargs):
    f = real_open(*args, **kwargs)
    fds.add(f.fileno())
    return CountingFile(f, calls)

  def fsync(fd):
    if fd in fds:  # Not TensorBoard's.
      with real_open(path) as f:  # What another process, or the disk after a crash, would see.
        calls.append(("fsync", f.read()))
    real_fsync(fd)

  monkeypatch.setattr(metrics, "open", counting_open, raising=False)
  monkeypatch.setattr(os, "fsync", fsync)
  writer = metrics.MetricWriter(str(tmp_path))
  first, second = full_record(11, 1), full_record(22, 2)
  writer.write(first, TIMING)
  writer.write(second, TIMING)
  writer.close()
  line1, line2 = json.dumps(first) + "\n", json.dumps(second) + "\n"
  assert calls == [
    ("write", line1),
    ("fsync", line1),  # Flushed before the fsync: the whole line is in the file.
    ("write", line2),
    ("fsync", line1 + line2),
  ]
