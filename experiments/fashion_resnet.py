"""A small ResNet on Fashion-MNIST at 28x28: a stem and three stages of one residual block each,
widths 8, 16 and 32 on grids of 28x28, 14x14 and 7x7, BatchNorm, a global-average-pool head.

The model of the factorization ablations' ResNet tables (`factorization.py`,
`factorization_depth.py`): its three grids are an early one (28), a medium one (14, inside
Inception-v3's 12-20) and a small one (7).
"""

import ml_collections

from experiments import fashion_mnist


def get_config() -> ml_collections.ConfigDict:
  config = fashion_mnist.get_config()
  config.model.name = "resnet"
  config.model.widths = (8, 16, 32)
  config.model.stage_sizes = (1, 1, 1)
  config.model.head = "gap"
  del config.model["hidden"]  # The gap head has no hidden layer.
  return config
