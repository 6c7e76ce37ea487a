"""`run.py bench`: the throughput of a config's train step, its report's structure and its CLI."""

import json
import os

import pytest
from report_loader import load as load_report

from research.errors import UserError
from research.measure import bench, reports

from support import load, run_cli


def _loaded(result: dict) -> reports.BenchReport:
  """The result through JSON and back into its dataclasses (field names and types checked)."""
  return load_report(reports.BenchReport, json.loads(json.dumps(result)))


def test_bench_reports_throughput_from_the_median_step(make_config):
  result = json.loads(
    json.dumps(bench.bench(make_config("data.batch_size=16"), warmup=1, repeats=5))
  )
  assert _loaded(result).schema == "convlab.bench/2"
  median = result["seconds"]["median"]
  assert result["steps_per_second"] == pytest.approx(1 / median)
  assert result["examples_per_second"] == pytest.approx(16 / median)
  # Eval and the matmul peak, from their own medians; the step's share of the peak.
  assert result["eval"]["examples_per_second"] == pytest.approx(
    result["eval"]["batch_size"] / result["eval"]["seconds"]["median"]
  )
  peak = result["peak"]
  assert peak["flops_per_second"] == pytest.approx(
    2 * bench.PEAK_SIZE**3 / peak["seconds"]["median"]
  )
  assert peak["step_share"] == pytest.approx(result["flops_per_second"] / peak["flops_per_second"])
  assert result["loop"] is None and result["layers"] is None  # Not asked for.
  compiled = result["compile"]
  assert compiled["warm_share"] == pytest.approx(compiled["warm"] / compiled["cold"])
  with pytest.raises(UserError):
    bench.bench(make_config(), repeats=4)


def test_the_loop_is_a_real_training_run_timed_after_its_first_epoch(make_config):
  small = ("data.batch_size=64", "model.widths=(4,)", "model.hidden=8")
  short = dict(loop=True, loop_steps=60, loop_max_steps=100, loop_rounds=2)
  result = bench.bench(make_config(*small), warmup=1, repeats=5, **short)
  assert isinstance(_loaded(result).loop, reports.LoopSpeed)
  loop = result["loop"]
  # 1,437 training digits at batch 64: 22 steps an epoch; 60 steps need 3 epochs after the first.
  assert (loop["epochs"], loop["steps"]) == (3, 3 * 22)
  assert len(loop["rounds"]) == 2
  for r in loop["rounds"]:
    assert r["examples_per_second"] == pytest.approx(64 * loop["steps"] / r["seconds"])
    per_second = r["examples_per_second"] / r["step_examples_per_second"]
    assert r["efficiency"] == pytest.approx(per_second)
  # The median round (the lower of two) is the one reported, with the range.
  low = min(loop["rounds"], key=lambda r: r["efficiency"])
  assert {k: loop[k] for k in low} == low
  assert loop["efficiency_min"] == low["efficiency"]
  assert loop["efficiency_max"] == max(r["efficiency"] for r in loop["rounds"])
  # A run of at most loop_max_steps is timed whole: 3 epochs (66 steps), 2 after the first.
  whole = bench.bench(make_config(*small, "train.num_epochs=3"), warmup=1, repeats=5, **short)
  assert (whole["loop"]["epochs"], whole["loop"]["steps"]) == (2, 2 * 22)


def test_cli_bench_takes_warmup_and_repeats_and_prints_json_that_loads_back(data_dir):
  result = run_cli(
    "bench",
    "--json",
    "--warmup=2",
    "--repeats=6",
    "--no-loop",
    f"--config.data.data_dir={data_dir}",
    "--config.data.batch_size=8",
    "--config.model.widths=(4,)",
    "--config.model.hidden=8",
  )
  assert result.returncode == 0, result.stderr
  report = load_report(reports.BenchReport, json.loads(result.stdout))
  assert (report.seconds.warmup, report.seconds.n, report.batch_size) == (2, 6, 8)
  assert report.loop is None and isinstance(report.layers[0], reports.LayerTimes)


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
  # The loop needs the data: skipped, saying why, with nothing written.
  assert "  loop        skipped: dataset 'mnist' is not prepared in " in result.stdout


def test_each_layer_is_timed_alone_pass_by_pass(make_config):
  config = make_config("data.batch_size=16", "model.widths=(4,)", "model.hidden=8")
  result = bench.bench(config, warmup=1, repeats=5, layers=True)
  assert len(_loaded(result).layers) == 3
  # By hand: conv 3x3 1->4 on 8x8 (SAME), pool to 4x4x4 = 64, dense 64->8, dense 8->10.
  shapes = [(layer["input_shape"], layer["output_shape"]) for layer in result["layers"]]
  assert shapes == [([16, 8, 8, 1], [16, 8, 8, 4]), ([16, 64], [16, 8]), ([16, 8], [16, 10])]
  assert result["layers"][0]["forward_flops"] == 2 * 16 * 8 * 8 * 9 * 4 + 16 * 8 * 8 * 4
  for layer in result["layers"]:
    assert set(layer["seconds"]) == {"forward", "input_grad", "weight_grad"}
    assert all(t["n"] == 5 and 0 < t["min"] <= t["median"] for t in layer["seconds"].values())


def test_seeds_together_are_timed_against_one_call_each(make_config):
  config = make_config("data.batch_size=16", "model.widths=(4,)", "model.hidden=8")
  result = bench.bench(config, warmup=1, repeats=5, seeds=3)
  assert isinstance(_loaded(result).seeds, reports.SeedsSpeed)
  seeds = result["seeds"]
  assert seeds["seeds"] == 3
  assert seeds["ratio"] == pytest.approx(seeds["together"]["median"] / seeds["apart"]["median"])
  assert seeds["vmap_ratio"] == pytest.approx(seeds["vmap"]["median"] / seeds["apart"]["median"])
  assert seeds["auto"] == "unrolled"  # On CPU.
  with pytest.raises(UserError, match="--seeds >= 1, got 0"):
    bench.bench(config, seeds=0)
