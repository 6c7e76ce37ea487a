"""The README's ablation tables are the committed results, rendered (`experiments/results/`)."""

import glob
import os

import pytest

from research.ablate import results as results_lib
from research.ablate import tables

from support import ROOT

RESULTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "results", "*.json")))


def test_there_are_committed_results():
  assert RESULTS


@pytest.mark.parametrize("path", RESULTS, ids=os.path.basename)
def test_every_committed_table_is_in_the_readme_as_rendered(path):
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  results = results_lib.read(path)
  for table in results.tables:
    assert tables.markdown(table, len(results.seeds)) in readme, (
      f"README.md lacks table {table.name!r} of {os.path.relpath(path, ROOT)} as rendered; "
      "copy it from the run's results.md"
    )


def _worked_example() -> str:
  """The Python block of the README's "Adding a block or an experiment" section."""
  with open(os.path.join(ROOT, "README.md")) as f:
    section = f.read().split("## Adding a block or an experiment", 1)[1].split("\n## ", 1)[0]
  return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def cross_block():
  """The README's worked example, run as if it were written into research/nn/blocks.py; the
  registry entry is removed afterwards."""
  from research.nn import blocks

  exec(_worked_example(), vars(blocks))
  try:
    yield blocks.BLOCKS["cross"]
  finally:
    blocks.BLOCKS.pop("cross", None)
    vars(blocks).pop("Cross", None)


def test_the_worked_example_is_under_30_lines():
  assert len(_worked_example().strip().splitlines()) < 30


def test_the_worked_example_block_is_one_plus_shaped_3x3(cross_block):
  """Its output is the full 3x3 convolution with the plus-shaped kernel that sums its two
  branches' kernels (the 3x1 in the middle column, the 1x3 in the middle row), by
  `lax.conv_general_dilated`."""
  import jax
  import numpy as np

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
  block = cross_block(5, activation=lambda v: v)
  variables = block.init(jax.random.PRNGKey(1), x)
  p = variables["params"]
  plus = np.zeros((3, 3, 4, 5), np.float32)
  plus[:, 1:2] += np.asarray(p["Conv_0"]["kernel"])
  plus[1:2, :] += np.asarray(p["Conv_1"]["kernel"])
  expected = jax.lax.conv_general_dilated(
    x, plus, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  ) + (p["Conv_0"]["bias"] + p["Conv_1"]["bias"])
  np.testing.assert_allclose(block.apply(variables, x), expected, atol=1e-5)


def test_the_worked_example_block_is_a_models_callable(cross_block):
  """`models.CNN(10, block=Cross)` on 8x8x1: each 3x3 is a 3x1 and a 1x3 (1 -> 32, then 32 -> 64),
  then the dense head on 2x2x64: parameters by hand."""
  import jax
  import jax.numpy as jnp

  from research.nn import models

  model = models.CNN(10, block=cross_block)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  convs = 2 * (3 * 1 * 32 + 32) + 2 * (3 * 32 * 64 + 64)
  head = (2 * 2 * 64 * 256 + 256) + (256 * 10 + 10)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == convs + head


def test_the_worked_example_block_trains_costs_and_ablates(cross_block, make_config, tmp_path):
  from research.ablate import study
  from research.config import apply_overrides, load_config
  from research.measure import cost
  from research.training import train

  # train: the reference CNN with every 3x3 as the new block; better than chance after one epoch.
  record = train.train_and_evaluate(
    make_config("model.block=cross", "train.num_epochs=1"), str(tmp_path / "train")
  )
  assert record["test_accuracy"] > 0.5

  # cost: one block at [2, 8, 8, 64] -> 64 against hand counts: a 3x1 and a 1x3, each 3*64*64
  # weights and 64 biases; each of the 2*8*8 output pixels takes 3*64 MACs per output channel.
  config = load_config(os.path.join(ROOT, "experiments", "cost_blocks.py"))
  apply_overrides(
    config,
    ["cost.blocks.batch_size=2", "cost.blocks.resolutions=(8,)", "cost.repeats=5"],
  )
  with config.unlocked():
    config.cost.blocks.variants = (
      {"label": "3x3", "blocks": ({"name": "conv"},)},
      {"label": "cross", "blocks": ({"name": "cross"},)},
    )
  rows = {r["label"]: r for r in cost.run(config)["tables"][0]["settings"][0]["rows"]}
  assert rows["cross"]["params"] == 2 * (3 * 64 * 64 + 64)
  assert rows["cross"]["macs"] == 2 * (2 * 8 * 8 * 64 * 3 * 64)
  assert rows["cross"]["ratio"]["params"] == pytest.approx((6 * 64 * 64 + 128) / (9 * 64 * 64 + 64))

  # ablate: the new block as a variant beside the 3x3, 2 seeds, 1 epoch.
  ablation = load_config(os.path.join(ROOT, "experiments", "ablations.py"))
  apply_overrides(
    ablation,
    [
      f"ablation.overrides=('data.data_dir={make_config().data.data_dir}', 'train.num_epochs=1')",
      "ablation.seeds=(0,1)",
      "ablation.repeats=5",
      "ablation.warmup=1",
      "ablation.tables=('blocks',)",
    ],
  )
  with ablation.ablation.blocks.unlocked():
    ablation.ablation.blocks.variants = (
      {"label": "3x3", "overrides": ("model.block=conv",)},
      {"label": "cross", "overrides": ("model.block=cross",)},
    )
  results, _ = study.run(ablation, str(tmp_path / "ablation"))
  [table] = results.tables
  cross = next(r for r in table.rows if r.label == "cross")
  assert cross.params < table.rows[0].params and cross.difference.n == 2
  assert len(cross.test_accuracy.values) == 2
