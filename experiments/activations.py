"""Activations in a deep plain stack on Fashion-MNIST: `python run.py ablate
--config=experiments/activations.py --out=workdirs/activations`.

Eight 3x3 convolutions of width 16 (a 2x2 average pool after every two), no normalization and no
residual connections (`model.name=plain`), so that every gradient passes through every activation:
sigmoid, tanh, relu, leaky_relu, gelu and none (identity, which makes the whole network one linear
map). The gradient norm of every layer is logged each epoch (`train.log_grad_norms`: metrics.jsonl,
TensorBoard) and plotted (`activations_grad_norms.png`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.ablation = ml_collections.ConfigDict()
  config.ablation.base = "fashion_mnist.py"
  config.ablation.overrides = (
    "model.name=plain",
    "model.widths=(16,16,16,16,16,16,16,16)",
    "model.norm=False",
    "train.log_grad_norms=True",
    "train.num_epochs=2",
  )
  config.ablation.seeds = (0, 1, 2, 3, 4)
  config.ablation.warmup = 3
  config.ablation.repeats = 10
  config.ablation.tables = ("activations",)

  config.ablation.activations = ml_collections.ConfigDict()
  config.ablation.activations.title = "a plain stack of 8 convolutions, no normalization"
  config.ablation.activations.reference = "relu"
  config.ablation.activations.variants = tuple(
    {"label": name, "overrides": (f"model.activation={name}",)}
    for name in ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity")
  )
  return config
