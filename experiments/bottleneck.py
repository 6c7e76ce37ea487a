"""1x1 bottlenecks on Fashion-MNIST: `python run.py ablate --config=experiments/bottleneck.py
--out=workdirs/bottleneck`.

Every 3x3 convolution of the reference CNN (`fashion_mnist.py`) as a bottleneck: a 1x1 reduction to
1/2, 1/4 or 1/8 of the layer's width, the 3x3 at that width, a 1x1 back to the width
(`model.block=bottleneck`, `model.reduction`), against the full 3x3.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.ablation = ml_collections.ConfigDict()
  config.ablation.base = "fashion_mnist.py"
  config.ablation.overrides = ("train.num_epochs=2",)
  config.ablation.seeds = (0, 1, 2, 3, 4)
  config.ablation.warmup = 3
  config.ablation.repeats = 10
  config.ablation.tables = ("bottleneck",)

  config.ablation.bottleneck = ml_collections.ConfigDict()
  config.ablation.bottleneck.title = "reference CNN: each 3x3 behind a 1x1 reduction"
  config.ablation.bottleneck.reference = "3x3"
  config.ablation.bottleneck.variants = (
    {"label": "3x3", "overrides": ("model.block=conv",)},
    *(
      {"label": f"1x1 to 1/{r}", "overrides": ("model.block=bottleneck", f"model.reduction={r}")}
      for r in (2, 4, 8)
    ),
  )
  return config
