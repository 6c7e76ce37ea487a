"""Config errors: one clear message naming the key, exit code 2, before anything is compiled or
written."""

import pytest

from research import config as config_lib
from research.errors import ConfigError, UserError
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


# Config files that cannot be loaded: each is one UserError naming the file and the cause.
UNLOADABLE = {
  "syntax_error.py": ("import ml_collections\ndef get_config()\n  return 1\n", "SyntaxError"),
  "raises.py": ("def get_config():\n  raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU"),
  "bad_import.py": ("import no_such_module_here\n", "ModuleNotFoundError"),
  "raises_at_import.py": ("x = 1 / 0\n", "ZeroDivisionError"),
  "returns_dict.py": (
    "def get_config():\n  return {'seed': 0}\n",
    "of type dict, not an ml_collections.ConfigDict",
  ),
  "returns_none.py": ("def get_config():\n  pass\n", "of type NoneType"),
  "takes_an_argument.py": ("def get_config(name):\n  return name\n", "TypeError"),
  "not_callable.py": ("get_config = 3\n", "TypeError"),
  "experiment.yaml": ("seed: 0\ndata:\n  name: mnist\n", "not a Python file"),
  "binary.py": (bytes(range(256)) * 4, "cannot be loaded"),
  "nul.py": (b"def get_config():\n  return 1\x00\n", "cannot be loaded"),
  "latin1.py": (b"x = '\xe9\xff'\n", "SyntaxError"),
}


def _write_config(folder, name):
  text, _ = UNLOADABLE[name]
  path = folder / name
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text)
  return str(path)


@pytest.mark.parametrize("name", sorted(UNLOADABLE))
def test_a_config_file_that_cannot_be_loaded_is_one_user_error_naming_it_and_the_cause(
  tmp_path, name
):
  path = _write_config(tmp_path, name)
  with pytest.raises(UserError) as e:
    config_lib.load_config(path)
  message = str(e.value)
  assert repr(path) in message and UNLOADABLE[name][1] in message
  assert "\n" not in message


def test_a_config_folder_is_a_user_error_saying_so(tmp_path):
  with pytest.raises(UserError, match=r"is a folder"):
    config_lib.load_config(str(tmp_path))


def test_ctrl_c_while_loading_a_config_file_is_not_turned_into_a_user_error(tmp_path):
  path = tmp_path / "interrupted.py"
  path.write_text("def get_config():\n  raise KeyboardInterrupt\n")
  with pytest.raises(KeyboardInterrupt):
    config_lib.load_config(str(path))


@pytest.mark.parametrize(
  "name", ["syntax_error.py", "returns_dict.py", "experiment.yaml", "binary.py", "bad_import.py"]
)
def test_cli_reports_an_unloadable_config_file_in_one_line_and_writes_nothing(tmp_path, name):
  path, workdir = _write_config(tmp_path, name), tmp_path / "run"
  result = run_cli("train", f"--config={path}", f"--workdir={workdir}", timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "Traceback" not in result.stderr and path in result.stderr
  assert not workdir.exists()


def test_cli_reports_a_config_folder_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("train", f"--config={tmp_path}", f"--workdir={workdir}", timeout=120)
  assert result.returncode == 2 and "is a folder" in result.stderr
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert not workdir.exists()


# Numbers JAX cannot hold: inf, nan, beyond float32 (~3.4e38) or int32 (2**31 - 1).
@pytest.mark.parametrize(
  "override, key, words",
  [
    ("optimizer.learning_rate=1e999", "optimizer.learning_rate", "not a finite number"),
    ("optimizer.learning_rate=-1e999", "optimizer.learning_rate", "not a finite number"),
    ("optimizer.learning_rate=1e39", "optimizer.learning_rate", "float32"),
    ("model.negative_slope=1e999", "model.negative_slope", "not a finite number"),
    ("schedule.warmup_epochs=1e999", "schedule.warmup_epochs", "not a finite number"),
    ("train.num_epochs=1000000000000000000000000", "train.num_epochs", "2**31 - 1"),
    ("seed=2147483648", "seed", "2**31 - 1"),
    ("data.batch_size=-2147483648", "data.batch_size", "2**31 - 1"),
    ("model.widths=(8, 1000000000000000000000000)", "model.widths", "2**31 - 1"),
    # A float key parses its text as a float (config_flags): 10**400 is inf in floating point.
    ("optimizer.learning_rate=1" + "0" * 400, "optimizer.learning_rate", "not a finite number"),
  ],
)
def test_an_override_beyond_the_range_jax_computes_in_names_the_key(override, key, words):
  config = config_lib.load_config(DEFAULT)
  before = config_lib.to_json(config)
  with pytest.raises(ConfigError) as e:
    config_lib.apply_overrides(config, [override])
  assert e.value.key == key and words in str(e.value)
  assert config_lib.to_json(config) == before  # Nothing was set.
  assert len(str(e.value)) < 200  # A 400-digit number is shortened, not printed.


@pytest.mark.parametrize(
  "value, words",
  [
    (({"label": "a", "blocks": ({"features": 2**31},)},), "2147483648 is beyond"),
    ((8, [0.5, {"x": (float("nan"),)}]), "nan is not a finite number"),
    ({"a": {"b": -1e39}}, "-1e+39 is beyond float32"),
  ],
)
def test_out_of_range_looks_inside_nested_tuples_lists_and_dicts(value, words):
  # Config values such as cost or ablation variants are tuples of dicts of tuples.
  assert words in config_lib.out_of_range(value)
  assert config_lib.out_of_range(({"label": "a", "blocks": ({"features": 2**31 - 1},)},)) is None


def test_the_largest_int32_and_float32_values_are_accepted():
  config = config_lib.load_config(DEFAULT)
  config_lib.apply_overrides(
    config, ["seed=2147483647", "train.num_epochs=2147483647", "optimizer.learning_rate=3.4e38"]
  )
  config_lib.validate(config)
  assert config.seed == 2**31 - 1 and config.optimizer.learning_rate == 3.4e38


def test_an_override_nested_too_deep_to_parse_is_a_type_error_naming_the_key():
  config = config_lib.load_config(DEFAULT)
  with pytest.raises(ConfigError, match="^config.data.batch_size: expects int"):
    config_lib.apply_overrides(config, ["data.batch_size=" + "-" * 100_000 + "1"])


@pytest.mark.parametrize(
  "key, value, words",
  [
    ("optimizer.learning_rate", float("inf"), "must be a positive finite number"),
    ("optimizer.learning_rate", float("nan"), "must be a positive finite number"),
    ("seed", 2**31, "must be an integer from 0 to 2**31 - 1"),
    ("train.num_epochs", 10**24, "must be an integer from 1 to 2**31 - 1"),
    ("data.batch_size", 2**40, "must be an integer from 1 to 2**31 - 1"),
    ("data.eval_batch_size", 2**31, "must be an integer from 1 to 2**31 - 1"),
    ("train.keep_checkpoints", 2**31, "must be an integer from 1 to 2**31 - 1"),
    ("train.checkpoint_every_steps", 2**31, "must be an integer from 0 (off) to 2**31 - 1"),
    ("model.negative_slope", float("nan"), "not a finite number"),
    ("model.negative_slope", -float("inf"), "not a finite number"),
    ("model.widths", (8, 2**31), "beyond +-(2**31 - 1)"),
  ],
)
def test_a_config_file_value_beyond_range_is_refused_by_validate_naming_the_key(key, value, words):
  # As if the experiment file set it: validate() sees every value, not only overrides.
  config = config_lib.load_config(DEFAULT)
  section, leaf = key.rpartition(".")[::2]
  (config_lib.get(config, section) if section else config)[leaf] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config)
  assert e.value.key == key and words in str(e.value)


@pytest.mark.parametrize(
  "override, key",
  [
    ("optimizer.learning_rate=1e999", "optimizer.learning_rate"),
    ("train.num_epochs=1000000000000000000000000", "train.num_epochs"),
    ("seed=1000000000000000000000000", "seed"),
    ("schedule.warmup_epochs=-5", "schedule.warmup_epochs"),
    ("train.num_epochs=100000000", "train.num_epochs"),  # 4.4e9 steps: more than int32 counts.
  ],
)
def test_cli_refuses_a_number_out_of_range_in_one_line_and_writes_nothing(
  data_dir, tmp_path, override, key
):
  workdir = tmp_path / "run"
  result = run_cli(
    "train",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.train.num_epochs=1",
    f"--config.{override}",
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert f"config.{key}: " in result.stderr and "Traceback" not in result.stderr
  assert not workdir.exists()
