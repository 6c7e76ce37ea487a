"""Seeds trained together (`train.train_seeds`, `run.py train --seeds`): each seed's files equal
those of a run of its own, bit for bit, through resume, seeds at different steps, a divergence."""

import json
import os
import signal

import jax.numpy as jnp
import pytest

from research.errors import TrainingDiverged
from research.training import state as state_lib
from research.training import train
from research.training.hooks import Hooks

from support import run_cli

SMALL = (
  "model.widths=(8,)",
  "model.hidden=16",
  "train.num_epochs=2",
  "train.checkpoint_every_epochs=1",
)


def _same_files(a, b) -> None:
  """The two workdirs' metrics.jsonl and config.json are byte for byte the same."""
  for name in ("metrics.jsonl", "config.json"):
    with open(os.path.join(a, name)) as f, open(os.path.join(b, name)) as g:
      assert f.read() == g.read(), name


@pytest.fixture(scope="module")
def alone(tmp_path_factory, data_dir):
  """Seeds 0 and 1, each trained in a run of its own: `{seed: workdir}`."""
  from support import load

  root = tmp_path_factory.mktemp("alone")
  found = {}
  for seed in (0, 1):
    config = load(f"data.data_dir={data_dir}", *SMALL, f"seed={seed}")
    found[seed] = str(root / f"seed_{seed}")
    train.train_and_evaluate(config, found[seed])
  return found


def test_seeds_trained_together_equal_runs_of_their_own_bit_for_bit(alone, make_config, tmp_path):
  workdirs = {seed: str(tmp_path / f"seed_{seed}") for seed in (0, 1)}
  records = train.train_seeds(make_config(*SMALL), workdirs)
  assert set(records) == {0, 1} and records[0] != records[1]  # Two seeds, two results.
  for seed in (0, 1):
    _same_files(workdirs[seed], alone[seed])


def test_seeds_at_different_steps_train_in_groups_to_the_same_numbers(alone, make_config, tmp_path):
  workdirs = {seed: str(tmp_path / f"seed_{seed}") for seed in (0, 1)}
  # Seed 0 has done its first epoch alone; seed 1 has not started.
  train.train_and_evaluate(make_config(*SMALL, "seed=0", "train.num_epochs=1"), workdirs[0])
  train.train_seeds(make_config(*SMALL), workdirs)
  for seed in (0, 1):
    _same_files(workdirs[seed], alone[seed])


def test_a_killed_multi_seed_run_resumes_to_the_same_numbers(alone, data_dir, tmp_path):
  args = ("train", f"--workdir={tmp_path}", "--seeds=0,1",
          f"--config.data.data_dir={data_dir}", *(f"--config.{o}" for o in SMALL))  # fmt: skip
  killed = run_cli(*args, fault="kill@step:60")  # Mid-epoch 2 (44 steps an epoch).
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = run_cli(*args)
  assert resumed.returncode == 0, resumed.stderr
  assert "Resuming from the checkpoint at step 44 " in resumed.stdout
  for seed in (0, 1):
    _same_files(str(tmp_path / f"seed_{seed}"), alone[seed])


def test_a_seed_that_diverges_stops_and_the_others_finish(alone, make_config, tmp_path):
  def seed_1_diverges_at_step_50(states, split, orders):
    outputs = [state_lib.indexed_train_step(s, split, o) for s, o in zip(states, orders)]
    if len(outputs) == 2:  # Seed 1 still trains: its loss becomes NaN at step 50.
      state, m = outputs[1]
      m = {**m, "loss": jnp.where(state.step == 50, jnp.nan, m["loss"])}
      outputs[1] = (state, m)
    return outputs

  workdirs = {seed: str(tmp_path / f"seed_{seed}") for seed in (0, 1)}
  with pytest.raises(TrainingDiverged) as e:
    train.train_seeds(make_config(*SMALL), workdirs, hooks=Hooks(steps=seed_1_diverges_at_step_50))
  assert str(e.value).startswith(
    "training diverged for seed(s) 1 (the others finished): training diverged: the loss is nan "
    "at step 50 (epoch 2)"
  )
  _same_files(workdirs[0], alone[0])  # Seed 0 finished, as alone.
  with open(os.path.join(workdirs[1], "metrics.jsonl")) as f:
    assert len(f.readlines()) == 1  # Seed 1 stopped in its second epoch.


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_vmapped_seeds_equal_runs_of_their_own_to_float_tolerance(alone, make_config, tmp_path):
  workdirs = {seed: str(tmp_path / f"seed_{seed}") for seed in (0, 1)}
  train.train_seeds(make_config(*SMALL, "train.seeds_together=vmap"), workdirs)
  for seed in (0, 1):
    got, want = _metrics(workdirs[seed]), _metrics(alone[seed])
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
      for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (seed, key)
  assert _metrics(workdirs[0]) != _metrics(workdirs[1])  # Each seed its own numbers.


def test_auto_steps_seeds_unrolled_on_cpu_and_vmapped_on_accelerators():
  assert state_lib.seeds_formulation("auto", "cpu") == "unrolled"
  assert state_lib.seeds_formulation("auto", "gpu") == "vmap"
  assert state_lib.seeds_formulation("auto", "tpu") == "vmap"
  assert state_lib.seeds_formulation("vmap", "cpu") == "vmap"
  assert state_lib.seeds_formulation("unrolled", "gpu") == "unrolled"


def test_seeds_together_is_checked(make_config):
  from research.errors import ConfigError
  from research.training.plan import make_plan

  with pytest.raises(ConfigError, match="train.seeds_together.*'auto', 'unrolled' or 'vmap'"):
    make_plan(make_config("train.seeds_together=grouped"), static=True)


@pytest.mark.parametrize("seeds", ["0,0", "a,b", "-1", ""])
def test_bad_seeds_on_the_command_line_are_one_line(tmp_path, seeds):
  result = run_cli("train", f"--workdir={tmp_path}", f"--seeds={seeds}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith("error: --seeds takes distinct non-negative integers")
  assert not os.listdir(tmp_path)
