"""The fast smoke ablation: `python run.py ablate --config=experiments/ablations.py`.

The default experiment (reference CNN, embedded 8x8 digits, 20 epochs) with every KxK convolution
swapped for another block, and with each activation, over five seeds. Its results are committed in
`experiments/results/ablations.json` and rendered into the README. On 1,437 training images of 8x8
most differences here are not resolved: the Fashion-MNIST ablations (`factorization.py`,
`bottleneck.py`, `activations.py`, `factorization_depth.py`) are the real ones.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.ablation = ml_collections.ConfigDict()
  config.ablation.base = "default.py"  # Under experiments/.
  config.ablation.overrides = ()  # Applied to every run, e.g. ("train.num_epochs=5",).
  config.ablation.seeds = (0, 1, 2, 3, 4)
  config.ablation.warmup = 3  # Untimed train steps before timing (research.measure.timing).
  config.ablation.repeats = 20  # Timed train steps per variant.
  config.ablation.tables = ("blocks", "activations")

  config.ablation.blocks = ml_collections.ConfigDict()
  config.ablation.blocks.title = "every 3x3 conv of the reference CNN swapped for another block"
  config.ablation.blocks.reference = "3x3"
  config.ablation.blocks.variants = (
    {"label": "3x3", "overrides": ("model.block=conv",)},
    {"label": "3x1+1x3", "overrides": ("model.block=factorized",)},
    {"label": "1x1 bottleneck", "overrides": ("model.block=bottleneck",)},
    {"label": "separable", "overrides": ("model.block=separable",)},
    {"label": "1x1 only", "overrides": ("model.block=pointwise",)},
  )

  config.ablation.activations = ml_collections.ConfigDict()
  config.ablation.activations.title = "the reference CNN with each activation"
  config.ablation.activations.reference = "relu"
  config.ablation.activations.variants = tuple(
    {"label": name, "overrides": (f"model.activation={name}",)}
    for name in ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "identity")
  )
  return config
