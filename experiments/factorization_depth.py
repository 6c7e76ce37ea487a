"""Where factorizing pays: `python run.py ablate --config=experiments/factorization_depth.py
--out=workdirs/factorization_depth`.

Szegedy et al. (Inception-v3, section 3.2) report that asymmetric factorization (3x1 then 1x3) works
poorly in early layers and well on medium grids (12 to 20 pixels). The small ResNet at 28x28
(`fashion_resnet.py`: stages on grids of 28, 14 and 7) with the first stage factorized (the stem
and the 28x28 block), only the later stages, or all of them, against none (`model.stage_blocks`).
"""

import ml_collections


def _stages(label: str, blocks: tuple[str, str, str]) -> dict:
  return {"label": label, "overrides": (f"model.stage_blocks={blocks!r}".replace(" ", ""),)}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.ablation = ml_collections.ConfigDict()
  config.ablation.base = "fashion_resnet.py"
  config.ablation.overrides = ("train.num_epochs=2",)
  config.ablation.seeds = (0, 1, 2, 3, 4)
  config.ablation.warmup = 3
  config.ablation.repeats = 10
  config.ablation.tables = ("depth",)

  config.ablation.depth = ml_collections.ConfigDict()
  config.ablation.depth.title = "ResNet at 28x28: which stages are factorized (3x1+1x3)"
  config.ablation.depth.reference = "none"
  config.ablation.depth.variants = (
    _stages("none", ("conv", "conv", "conv")),
    _stages("first stage (28x28)", ("factorized", "conv", "conv")),
    _stages("later stages (14x14, 7x7)", ("conv", "factorized", "factorized")),
    _stages("all", ("factorized", "factorized", "factorized")),
  )
  return config
