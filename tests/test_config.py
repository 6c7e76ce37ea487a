"""Config errors: one clear message naming the key, exit code 2, before anything is compiled or
written."""

import pytest

from research import config as config_lib
from research.errors import ConfigError
from research.training import optim, train

from support import DEFAULT, run_cli


def test_override_sets_nested_keys_with_their_types():
  config = config_lib.load_config(DEFAULT)
  config_lib.apply_overrides(
    config,
    [
      "data.batch_size=64",
      "optimizer.learning_rate=1",
      "data.download=true",
      "data.data_dir=/tmp/x",
      "seed=7",
    ],
  )
  assert config.data.batch_size == 64 and config.optimizer.learning_rate == 1.0
  assert isinstance(config.optimizer.learning_rate, float)
  assert config.data.download is True and config.data.data_dir == "/tmp/x" and config.seed == 7


@pytest.mark.parametrize(
  "override, key, words",
  [
    ("data.batch_sise=64", "data.batch_sise", "no such key"),
    ("dta.batch_size=64", "dta", "no such section"),
    ("data.batch_size=abc", "data.batch_size", "expects int"),
    ("data.batch_size=2.5", "data.batch_size", "expects int"),
    ("data.batch_size=True", "data.batch_size", "expects int"),
    ("data.download=3", "data.download", "expects bool"),
    ("data=3", "data", "is a section"),
  ],
)
def test_bad_override_names_the_key(override, key, words):
  config = config_lib.load_config(DEFAULT)
  with pytest.raises(ConfigError) as e:
    config_lib.apply_overrides(config, [override])
  assert e.value.key == key and words in str(e.value)


@pytest.mark.parametrize(
  "override, key",
  [
    ("data.batch_size=0", "data.batch_size"),
    ("data.eval_batch_size=-4", "data.eval_batch_size"),
    ("train.num_epochs=0", "train.num_epochs"),
    ("optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
    ("seed=-1", "seed"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
  ],
)
def test_impossible_value_names_the_key(override, key):
  config = config_lib.load_config(DEFAULT)
  config_lib.apply_overrides(config, [override])
  with pytest.raises(ConfigError, match=f"^config.{key}: must be"):
    config_lib.validate(config)


@pytest.mark.parametrize(
  "override, key",
  [
    ("optimizer.name='adamz'", "optimizer.name"),
    ("schedule.name='linear'", "schedule.name"),
    ("model.name='vgg'", "model.name"),
    ("data.batch_size=5000", "data.batch_size"),
  ],
)
def test_unknown_names_and_impossible_sizes_are_refused_before_the_workdir_is_written(
  make_config, tmp_path, override, key
):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=f"^config.{key}: "):
    train.train_and_evaluate(make_config(override), str(workdir))
  assert not workdir.exists()


def test_unknown_optimizer_argument_names_the_key(make_config):
  config = make_config()
  with config.optimizer.unlocked():
    config.optimizer.momentun = 0.9
  with pytest.raises(
    ConfigError, match="^config.optimizer.momentun: 'adam' takes no such argument"
  ):
    optim.build_optimizer(config, total_steps=10, steps_per_epoch=1)


def test_cli_reports_a_bad_key_in_one_line_with_exit_code_2_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("train", f"--workdir={workdir}", "--config.model.widhts=(8,)", timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "config.model.widhts" in result.stderr and "Traceback" not in result.stderr
  assert not workdir.exists()


def test_cli_reports_a_missing_config_file(tmp_path):
  result = run_cli("train", "--config=experiments/nope.py", f"--workdir={tmp_path}", timeout=120)
  assert (
    result.returncode == 2
    and "experiments/nope.py" in result.stderr
    and "Traceback" not in result.stderr
  )


def test_cli_help_lists_the_commands():
  result = run_cli("--help", timeout=60)
  assert result.returncode == 0 and "train" in result.stdout and "COMMAND" in result.stdout
