"""A small Inception network (stem + two Inception modules, BatchNorm, global-average-pool head)
on the digits."""

import ml_collections

from experiments import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = "inception"
  config.model.widths = (32, 64)
  config.model.stem_width = 32
  config.model.norm = True
  config.model.head = "gap"
  del config.model["hidden"]
  return config
