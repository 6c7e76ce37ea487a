"""Several processes as one run (`jax.distributed`, CPU collectives over gloo) and checkpoints that
move between device counts."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research.data import batches, splits
from research.errors import ConfigError
from research.training import checkpoint, distributed, integrity, metrics
from research.training.plan import make_plan
from tests.support import ROOT, load, run_cli

WORKER = os.path.join(ROOT, "tests", "training", "distributed_worker.py")
# Two processes sum their halves' gradients in another order than one process sums the whole
# batch: float32 rounding, which Adam's division by the root of its second moment amplifies where
# gradients are near zero. After the 44 steps of one epoch the parameters agreed to 2.5e-7
# (absolute) here; 1e-4 leaves room, and a per-process data order made the test fail (checked).
TOLERANCE = 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(out, workdir, n: int, data_dir: str, *overrides: str) -> list[subprocess.Popen]:
  """Starts the `n` processes of one run (`distributed_worker.py`)."""
  port = _free_port()
  args = [f"--config.{o}" for o in (f"data.data_dir={data_dir}", "train.num_epochs=1", *overrides)]
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  return [
    subprocess.Popen(
      [sys.executable, WORKER, str(out), str(workdir), str(i), str(n), str(port), *args],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(n)
  ]


def _finish(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
  done = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=300)
    done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return done


def _workers(out, workdir, n: int, data_dir: str, *overrides: str) -> list:
  """Runs the `n` processes of one run to the end; returns their completed processes."""
  return _finish(_start(out, workdir, n, data_dir, *overrides))


def _params(path) -> dict:
  with np.load(path) as f:
    return dict(f)


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory):
  """One epoch of the default experiment in 2 processes (1 CPU device each) and in 1 process
  with the same global batch."""
  root = tmp_path_factory.mktemp("distributed")
  (root / "two").mkdir()
  (root / "one").mkdir()
  two = _workers(root / "two", root / "two" / "run", 2, data_dir)
  one = _workers(root / "one", root / "one" / "run", 1, data_dir)
  for p in (*two, *one):
    assert p.returncode == 0, p.stderr[-3000:]
  return root, two


def test_two_processes_end_with_identical_parameters_equal_to_one_process(two_processes):
  root, _ = two_processes
  first, second = _params(root / "two" / "params_0.npz"), _params(root / "two" / "params_1.npz")
  alone = _params(root / "one" / "params_0.npz")
  assert first.keys() == second.keys() == alone.keys() and first
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    np.testing.assert_allclose(first[name], alone[name], rtol=TOLERANCE, atol=TOLERANCE)


def test_two_processes_feed_each_example_of_the_epoch_exactly_once(two_processes, data_dir):
  root, _ = two_processes
  fed = [json.loads((root / "two" / f"fed_{i}.json").read_text()) for i in range(2)]
  config = load(f"data.data_dir={data_dir}")
  steps, batch = len(fed[0][0]), config.data.batch_size
  # Each process fed one shard of the epoch's order: every step, half of the batch.
  assert [len(f) for f in fed] == [1, 1]
  assert all(len(row) == batch // 2 for f in fed for row in f[0])
  seen = np.concatenate([np.ravel(f[0]) for f in fed])
  num_train = len(splits.load(config)[0])
  assert steps == num_train // batch
  assert len(seen) == steps * batch and len(np.unique(seen)) == len(seen)
  assert seen.min() >= 0 and seen.max() < num_train
  # And each step's global batch is the one the data order defines, halves in device order.
  order = batches.epoch_order(config.seed, 0, num_train)[: steps * batch].reshape(steps, batch)
  np.testing.assert_array_equal(np.concatenate([fed[0][0], fed[1][0]], axis=1), order)


def test_only_process_0_writes_the_metrics_and_the_console(two_processes):
  root, (first, second) = two_processes
  run = root / "two" / "run"
  assert len(metrics.read(str(run))) == 1  # One record for the one epoch, not one per process.
  assert "epoch    1" in first.stdout and "Done: test_accuracy" in first.stdout
  # Gloo's C++ prints a line of its own; nothing of the run's.
  assert [line for line in second.stdout.splitlines() if not line.startswith("[Gloo]")] == []


def test_two_processes_save_one_checkpoint_that_verifies(two_processes):
  root, _ = two_processes
  run = str(root / "two" / "run")
  steps = integrity.steps(run)
  assert steps == [44]
  assert integrity.verify(os.path.join(checkpoint.directory(run), "44")) is None
  assert not os.path.exists(os.path.join(run, "run.lock"))  # Released by process 0.


def test_two_processes_resume_together(two_processes, data_dir):
  """A second epoch in the same workdir: both processes restore step 44 and go on."""
  root, _ = two_processes
  out = root / "resumed"
  out.mkdir()
  resumed = _workers(out, root / "two" / "run", 2, data_dir, "train.num_epochs=2")
  for p in resumed:
    assert p.returncode == 0, p.stderr[-3000:]
  assert "Resuming from the checkpoint at step 44" in resumed[0].stdout + resumed[0].stderr
  records = metrics.read(str(root / "two" / "run"))
  assert [r["epoch"] for r in records] == [1, 2]
  first, second = _params(out / "params_0.npz"), _params(out / "params_1.npz")
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_a_stop_signal_to_one_process_stops_both_at_one_saved_step(data_dir, tmp_path):
  """SIGTERM to process 1 alone: both stop at the same step (exit code 3), which is saved once and
  verifies; process 0 says that another process was asked to stop."""
  workdir = tmp_path / "run"
  procs = _start(tmp_path, workdir, 2, data_dir, "train.num_epochs=1000")
  deadline = time.monotonic() + 120
  while not metrics.read(str(workdir)) and time.monotonic() < deadline:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  first, second = _finish(procs)
  assert (first.returncode, second.returncode) == (3, 3), first.stderr[-2000:]
  assert "stopped by SIGTERM at step" in second.stderr
  assert "stopped by a stop request to another process at step" in first.stderr
  step = int(first.stderr.split("at step ")[1].split()[0])
  assert f"at step {step} " in second.stderr and step < 1000 * 44
  assert integrity.steps(str(workdir))[-1] == step
  assert integrity.verify(os.path.join(checkpoint.directory(str(workdir)), str(step))) is None


@pytest.mark.parametrize(
  "settings, key",
  [
    (("distributed.num_processes=0",), "distributed.num_processes"),
    (("distributed.num_processes=2", "distributed.process_id=2"), "distributed.process_id"),
    (("distributed.num_processes=2",), "distributed"),
  ],
)
def test_impossible_distributed_settings_name_the_key(settings, key, monkeypatch):
  for variable in distributed.ENV.values():
    monkeypatch.delenv(variable, raising=False)
  with pytest.raises(ConfigError) as e:
    distributed.settings(load(*settings))
  assert e.value.key == key


def test_settings_come_from_the_environment_where_the_config_leaves_them(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings(load()) == {
    "coordinator": "host0:1234",
    "num_processes": 4,
    "process_id": 3,
  }
  assert distributed.settings(load("distributed.process_id=1"))["process_id"] == 1
  monkeypatch.setenv("JAX_PROCESS_ID", "three")
  with pytest.raises(ConfigError, match=r"\$JAX_PROCESS_ID is 'three'"):
    distributed.settings(load())


def _train(workdir, data_dir, epochs: int, devices: int):
  flags = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  result = run_cli(
    "train",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.num_epochs={epochs}",
    "--config.train.checkpoint_every_epochs=1",
    env=flags,
  )
  assert result.returncode == 0, result.stderr
  assert f"on {devices} cpu device(s)" in result.stdout
  return result


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """Two epochs on 1 device, uninterrupted."""
  workdir = tmp_path_factory.mktemp("straight")
  _train(workdir, data_dir, 2, 1)
  return workdir


@pytest.mark.parametrize("before, after", [(8, 1), (1, 8)])
def test_a_checkpoint_resumes_on_another_device_count(before, after, straight, data_dir, tmp_path):
  """Saved after epoch 1 on `before` devices and resumed for epoch 2 on `after`, the run ends where
  an uninterrupted one on 1 device does, to float tolerance (the gradient's all-reduce over 8
  devices sums in another order)."""
  _train(tmp_path / "moved", data_dir, 1, before)
  resumed = _train(tmp_path / "moved", data_dir, 2, after)
  assert "Resuming from the checkpoint at step 44" in resumed.stdout
  a, b = metrics.read(str(straight)), metrics.read(str(tmp_path / "moved"))
  assert [r["epoch"] for r in b] == [1, 2]
  for key in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=2e-3, atol=2e-3)
  plan = make_plan(load(f"data.data_dir={data_dir}"))
  params = [
    checkpoint.restore(str(path), 88, plan.initial_state(0))[0].params
    for path in (straight, tmp_path / "moved")
  ]
  for x, y in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]), strict=True):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=TOLERANCE, atol=TOLERANCE)


def test_a_config_without_a_distributed_section_is_one_process(monkeypatch):
  import ml_collections

  for variable in distributed.ENV.values():
    monkeypatch.delenv(variable, raising=False)
  config = ml_collections.ConfigDict({"seed": 0})
  assert distributed.settings(config) == dict.fromkeys(distributed.ENV)
  assert distributed.initialize(config) is False


def test_a_coordinator_nobody_answers_at_is_one_line_not_an_abort(tmp_path):
  """JAX aborts the process (a C++ fatal error and its stack trace) when it cannot reach the
  coordinator; the run says so in one line instead, exit code 2, and writes nothing."""
  result = run_cli(
    "train",
    f"--workdir={tmp_path / 'run'}",
    "--config.distributed.num_processes=2",
    "--config.distributed.process_id=1",
    f"--config.distributed.coordinator=localhost:{_free_port()}",
    "--config.distributed.timeout_seconds=2",
    timeout=60,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith("error: config.distributed.coordinator: nothing answered at")
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_coordinator_port_in_use_is_one_line_for_process_0(tmp_path):
  with socket.socket() as busy:
    busy.bind(("", 0))
    busy.listen()
    result = run_cli(
      "train",
      f"--workdir={tmp_path / 'run'}",
      "--config.distributed.num_processes=2",
      "--config.distributed.process_id=0",
      f"--config.distributed.coordinator=localhost:{busy.getsockname()[1]}",
      timeout=60,
    )
  assert result.returncode == 2, result.stderr[-2000:]
  assert "config.distributed.coordinator: process 0 cannot listen on port" in result.stderr
  assert not (tmp_path / "run").exists()
