"""What each block costs against the full 3x3, at equal widths:
`python run.py cost --config=experiments/cost_blocks.py`.

One table: batch 32 of 32x32x64 -> 64 channels (the shapes of the issue's measurement). Analytic
forward ratios to the 3x3: 3x1+1x3 6/9; 1x1 bottleneck (64 -> 16 -> 16 -> 64)
(2 * 64 * 16 + 9 * 16 * 16) / (9 * 64 * 64) = 0.174; separable
(9 * 64 + 64 * 64) / (9 * 64 * 64) = 0.127. The last row factorizes only the 3x3 inside the
bottleneck and is compared with the bottleneck: (2 * 64 * 16 + 6 * 16 * 16) /
(2 * 64 * 16 + 9 * 16 * 16) = 0.824 of the block (the same at 256 -> 64 -> 64 -> 256), not 6/9.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.cost = ml_collections.ConfigDict()
  config.cost.tables = ("blocks",)  # Table sections below, in print order.
  config.cost.warmup = 1  # Untimed calls after compilation.
  config.cost.repeats = 7  # Timed calls per pass (>= 5), the variants taking turns.
  config.cost.passes = (
    "forward",
    "forward_backward",
  )  # Also "train_step": the same plus SGD on the parameters.

  config.cost.blocks = ml_collections.ConfigDict()
  config.cost.blocks.title = "one block at equal widths"
  config.cost.blocks.batch_size = 32
  config.cost.blocks.resolutions = (32,)  # Square inputs, pixels a side.
  # Input channels, a tuple; None: each width. A typed placeholder, so that an override can set it.
  config.cost.blocks.in_channels = config_dict.placeholder(tuple)
  config.cost.blocks.widths = (64,)  # Output channels.
  config.cost.blocks.reference = "3x3"  # Ratios are to this variant (a variant may name its own).
  config.cost.blocks.variants = (
    {"label": "3x3", "blocks": ({"name": "conv"},)},
    {"label": "3x1+1x3", "blocks": ({"name": "factorized"},)},
    {"label": "1x1 bottleneck", "blocks": ({"name": "bottleneck"},)},
    {"label": "separable", "blocks": ({"name": "separable"},)},
    {
      "label": "bneck 3x1+1x3",
      "reference": "1x1 bottleneck",
      "blocks": ({"name": "bottleneck", "inner": "factorized"},),
    },
  )

  # The block train step's optimizer (its FLOPs are research.measure.flops.OPTIMIZER_FLOPS per
  # parameter).
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "constant"
  return config
