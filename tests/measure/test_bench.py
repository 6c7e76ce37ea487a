"""`run.py bench`: the throughput of a config's train step, its schema and its CLI."""

import json
import os

import jsonschema
import pytest

from research.errors import UserError
from research.measure import bench
from research.measure.schemas import BENCH_SCHEMA

from support import load, run_cli


def test_bench_reports_throughput_from_the_median_step(make_config):
  result = json.loads(
    json.dumps(bench.bench(make_config("data.batch_size=16"), warmup=1, repeats=5))
  )
  jsonschema.validate(result, BENCH_SCHEMA)
  median = result["seconds"]["median"]
  assert result["steps_per_second"] == pytest.approx(1 / median)
  assert result["examples_per_second"] == pytest.approx(16 / median)
  with pytest.raises(UserError):
    bench.bench(make_config(), repeats=4)


def test_cli_bench_takes_warmup_and_repeats_and_prints_json_that_validates(data_dir):
  result = run_cli(
    "bench",
    "--json",
    "--warmup=2",
    "--repeats=6",
    f"--config.data.data_dir={data_dir}",
    "--config.data.batch_size=8",
    "--config.model.widths=(4,)",
    "--config.model.hidden=8",
  )
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  jsonschema.validate(report, BENCH_SCHEMA)
  assert (report["seconds"]["warmup"], report["seconds"]["n"], report["batch_size"]) == (2, 6, 8)


def test_cli_bench_refuses_too_few_repeats_in_one_line(data_dir):
  result = run_cli("bench", "--repeats=4", f"--config.data.data_dir={data_dir}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip() == "error: bench needs --warmup >= 1 and --repeats >= 5, got 3 and 4"


def test_bench_needs_the_shape_of_a_named_dataset_not_its_data(tmp_path):
  config = load(
    "data.name=mnist", f"data.data_dir={tmp_path}", "data.batch_size=8",
    "model.widths=(4,)", "model.hidden=8",
  )  # fmt: skip
  result = bench.bench(config, warmup=1, repeats=5)
  # 28x28x1: conv 3x3 1->4, pool -> 14x14x4, dense 784 -> 8, dense 8 -> 10.
  assert result["input_shape"] == [28, 28, 1]
  assert result["params"] == (9 * 4 + 4) + (14 * 14 * 4 * 8 + 8) + (8 * 10 + 10)
  assert os.listdir(tmp_path) == []  # Nothing downloaded, prepared or read.


def test_cli_bench_on_a_dataset_this_machine_never_saw(tmp_path):
  result = run_cli(
    "bench", "--config.data.name=mnist", f"--config.data.data_dir={tmp_path}",
    "--config.model.widths=(4,)", "--config.model.hidden=8", "--repeats=5", "--warmup=1",
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert "batch 32 of 28x28x1" in result.stdout and os.listdir(tmp_path) == []
