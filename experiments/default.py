"""The default experiment: the reference CNN on the embedded 8x8 digits (scikit-learn, via TFDS)."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "sklearn_digits"  # Or any TFDS image-classification dataset: mnist, cifar10, ...
  config.data.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.data.download = False  # Named TFDS datasets download only when asked (needs network).
  config.data.batch_size = 32
  config.data.eval_batch_size = 128

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20
  config.train.checkpoint_every_epochs = 1
  config.train.keep_checkpoints = 3
  return config
