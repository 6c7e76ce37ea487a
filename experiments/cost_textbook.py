"""The textbook worked examples of 1x1 and factorized convolutions, counted and timed (batch 1).

`python run.py cost --config=experiments/cost_textbook.py`
  reduction: a 100x100x256 volume through N 1x1x256 filters gives 100x100xN in 100 * 100 * 256 * N
    MACs (N = 32: 81.9M), 1/9 of a 3x3 with the same N.
  factorization: a 3x3 convolution of 100x100x512 with D = 64 filters costs
    100 * 100 * 9 * 512 * 64 = 2.95G MACs; 3x1 (512 -> 64) + 1x3 (64 -> 64) costs
    100 * 100 * 3 * 64 * (512 + 64) = 1.11G (0.375); a 1x1 reduction to 32 channels before the 3x3
    costs 100 * 100 * 32 * (512 + 9 * 64) = 348M (0.118).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.cost = ml_collections.ConfigDict()
  config.cost.tables = ("reduction", "factorization")
  config.cost.warmup = 1
  config.cost.repeats = 5
  config.cost.passes = (
    "forward",
    "forward_backward",
  )  # Also "train_step": the same plus SGD on the parameters.

  config.cost.reduction = ml_collections.ConfigDict()
  config.cost.reduction.title = "1x1 reduction of 100x100x256 to N channels"
  config.cost.reduction.batch_size = 1
  config.cost.reduction.resolutions = (100,)
  config.cost.reduction.in_channels = (256,)
  config.cost.reduction.widths = (32,)  # N.
  config.cost.reduction.reference = "3x3"
  config.cost.reduction.variants = (
    {"label": "3x3", "blocks": ({"name": "conv"},)},
    {"label": "1x1", "blocks": ({"name": "pointwise"},)},
  )

  config.cost.factorization = ml_collections.ConfigDict()
  config.cost.factorization.title = "3x3 on 100x100x512 with D filters"
  config.cost.factorization.batch_size = 1
  config.cost.factorization.resolutions = (100,)
  config.cost.factorization.in_channels = (512,)
  config.cost.factorization.widths = (64,)  # D.
  config.cost.factorization.reference = "3x3"
  config.cost.factorization.variants = (
    {"label": "3x3", "blocks": ({"name": "conv"},)},
    {"label": "3x1+1x3", "blocks": ({"name": "factorized"},)},
    {
      "label": "1x1 to 32, 3x3",
      "blocks": ({"name": "pointwise", "features": 32}, {"name": "conv"}),
    },
  )

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "constant"
  return config
