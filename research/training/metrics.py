"""Where metrics go: one line per epoch to stdout, `metrics.jsonl` and TensorBoard event files.

`metrics.jsonl` holds one JSON object per evaluation with `step`, `epoch`, `train_loss`,
`train_accuracy`, `test_loss`, `test_accuracy` and `learning_rate`: only values that the config and
seed determine, so two runs of one config give identical files. Wall-clock figures go to stdout and
TensorBoard.
"""

import json
import logging
import os

import tensorboardX

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read(workdir: str) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl`, oldest first ([] if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_after(workdir: str, step: int) -> None:
  """Drops records past `step`: a resumed run rewrites what came after its checkpoint."""
  records = [r for r in read(workdir) if r["step"] <= step]
  path = os.path.join(workdir, METRICS_FILE)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(path + ".tmp", path)


class MetricWriter:
  """Appends one record per evaluation to all three sinks (stdout through the `logging` module)."""

  def __init__(self, workdir: str):
    self._file = open(os.path.join(workdir, METRICS_FILE), "a")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: dict, timing: dict) -> None:
    """`record`: deterministic metrics (to every sink); `timing`: seconds and rates
    (stdout, TensorBoard)."""
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for key, value in {**record, **timing}.items():
      if key not in ("step", "epoch"):
        self._tb.add_scalar(key, value, record["step"])
    self._tb.flush()
    log.info(
      f"epoch {record['epoch']:4d}  step {record['step']:7d}  "
      f"train_loss {record['train_loss']:.4f}  test_loss {record['test_loss']:.4f}  "
      f"test_accuracy {100 * record['test_accuracy']:6.2f}%  "
      f"({timing['epoch_seconds']:.2f} s, {timing['train_examples_per_second']:.0f} examples/s)"
    )

  def close(self) -> None:
    self._file.close()
    self._tb.close()
