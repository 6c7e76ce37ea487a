"""Where metrics go: one line per epoch to stdout, `metrics.jsonl` and TensorBoard event files.

`metrics.jsonl` holds one JSON object per evaluation with `step`, `epoch`, `train_loss`,
`train_accuracy`, `test_loss`, `test_accuracy` and `learning_rate`: only values that the config and
seed determine, so two runs of one config give identical files. Wall-clock figures go to stdout and
TensorBoard.

Torn lines: `MetricWriter.write` writes each record as one `write()` of the whole line, its "\\n"
included, then flushes and fsyncs it before the next one, so a crash or a full disk mid-write can
only leave the last line incomplete. `read` drops such a last line with a warning (its record was
never committed), and `truncate_after`, which every run calls before it appends, rewrites the file
without it, so the next record starts on a fresh line. A line that does not parse anywhere else is
corruption, not a cut-short write: a `CheckpointError`.
"""

import json
import logging
import os

import tensorboardX

from research.errors import CheckpointError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _parse(line: bytes) -> dict | None:
  """The record on one line, or None where it is not a JSON object."""
  try:
    record = json.loads(line)
  except ValueError:  # JSONDecodeError, or UnicodeDecodeError from a line cut inside a character.
    return None
  return record if isinstance(record, dict) else None


def read(workdir: str) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl`, oldest first ([] if there is none).

  An incomplete last line (no "\\n" at its end, or not a JSON object) is dropped with a warning;
  a line that does not parse before it raises `CheckpointError`.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  *complete, tail = data.split(b"\n")  # `tail`: what follows the last "\n" (b"" when nothing).
  lines = [line + b"\n" for line in complete] + ([tail] if tail else [])
  numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
  records = []
  for number, line in numbered:
    record = _parse(line) if line.endswith(b"\n") else None
    if record is not None:
      records.append(record)
    elif number == numbered[-1][0]:
      log.warning(
        f"dropped the incomplete last line {number} of {path} ({len(line)} bytes): a write was "
        "cut short (a crash or a full disk); the records before it are kept."
      )
    else:
      raise CheckpointError(
        f"{path} is corrupt: line {number} of {len(lines)} is not a JSON record, and only the "
        "last line can be a cut-short write; repair or delete that line, or start a fresh workdir."
      )
  return records


def truncate_after(workdir: str, step: int) -> None:
  """Drops records past `step`, and an incomplete last line: a resumed run rewrites what came
  after its checkpoint, each record on a line of its own."""
  records = [r for r in read(workdir) if r["step"] <= step]
  path = os.path.join(workdir, METRICS_FILE)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.flush()
    os.fsync(f.fileno())  # On disk before it replaces the old file.
  os.replace(path + ".tmp", path)


class MetricWriter:
  """Appends one record per evaluation to all three sinks (stdout through the `logging` module)."""

  def __init__(self, workdir: str, label: str = ""):
    """`label` starts each printed line (`"seed 3: "` when several seeds train together)."""
    self._label = label
    self._file = open(os.path.join(workdir, METRICS_FILE), "a")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: dict, timing: dict, compiling: bool = False) -> None:
    """`record`: deterministic metrics (to every sink); `timing`: seconds and rates (stdout,
    TensorBoard); `compiling`: the epoch's time includes compiling the step (said on its line)."""
    # One write() of the whole line, then on disk: only the last line of the file can be torn.
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    for key, value in {**record, **timing}.items():
      if key not in ("step", "epoch"):
        self._tb.add_scalar(key, value, record["step"])
    self._tb.flush()
    log.info(
      f"{self._label}epoch {record['epoch']:4d}  step {record['step']:7d}  "
      f"train_loss {record['train_loss']:.4f}  test_loss {record['test_loss']:.4f}  "
      f"test_accuracy {100 * record['test_accuracy']:6.2f}%  "
      f"({timing['epoch_seconds']:.2f} s, {timing['train_examples_per_second']:.0f} examples/s"
      + (", compiling included)" if compiling else ")")
    )

  def close(self) -> None:
    self._file.close()
    self._tb.close()


class NoWriter:
  """The metrics sink of a process other than 0, which writes no file and no line."""

  def write(self, record: dict, timing: dict, compiling: bool = False) -> None:
    pass

  def close(self) -> None:
    pass
