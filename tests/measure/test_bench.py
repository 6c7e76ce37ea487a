"""`run.py bench`: the throughput of a config's train step, its schema and its CLI."""

import json

import jsonschema
import pytest

from research.errors import UserError
from research.measure import bench
from research.measure.schemas import BENCH_SCHEMA

from support import run_cli


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
