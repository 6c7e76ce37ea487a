"""A small ResNet (two stages of two residual blocks, BatchNorm, global-average-pool head)
on the digits."""

import ml_collections

from experiments import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = "resnet"
  config.model.widths = (16, 32)
  config.model.stage_sizes = (2, 2)
  config.model.norm = True
  config.model.head = "gap"
  del config.model["hidden"]  # The gap head has no hidden layer.
  return config
