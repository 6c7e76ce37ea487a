"""The default experiment: the reference CNN on the embedded 8x8 digits (scikit-learn, via TFDS)."""

import ml_collections
from ml_collections import config_dict

from research.training import distributed


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # sklearn_digits (embedded), fashion_mnist, mnist, kmnist (from IDX files) or any TFDS
  # image-classification dataset: `python run.py data` lists them.
  config.data.name = "sklearn_digits"
  # The TFDS data dir. None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.data.data_dir = config_dict.placeholder(str)
  # Where the IDX files of fashion_mnist, mnist or kmnist are. None: the usual place
  # (/usr/share/datasets/fashion-mnist for Debian's dataset-fashion-mnist).
  config.data.source_dir = config_dict.placeholder(str)
  config.data.download = False  # Named TFDS datasets download only when asked (needs network).
  config.data.batch_size = 32
  config.data.eval_batch_size = 128

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"  # cnn | resnet | inception (research/nn/models.py).
  config.model.widths = (32, 64)  # One block + 2x2 average pool per width.
  config.model.hidden = 256  # Width of the dense head's hidden layer.
  # What every KxK conv is: conv | factorized | bottleneck | separable | pointwise.
  config.model.block = "conv"
  # Per stage instead (one name per width, the stem in the first stage): e.g. ("conv", "factorized")
  # factorizes the second stage only. Empty: `block` everywhere.
  config.model.stage_blocks = ()
  config.model.reduction = 4  # The bottleneck block's 1x1 reduction: inner width = width // 4.
  config.model.kernel_size = 3
  config.model.padding = "SAME"  # SAME | VALID.
  # sigmoid | tanh | relu | leaky_relu | elu | gelu | silu | identity.
  config.model.activation = "relu"
  config.model.negative_slope = 0.01  # leaky_relu's slope below zero.
  config.model.norm = False  # BatchNorm after every convolution.
  # dense (flatten -> hidden -> classes) | gap (1x1 conv -> global average pool).
  config.model.head = "dense"
  # How each convolution is computed: native (XLA's convolution), shifted (one matmul per tap),
  # im2col (one matmul) or auto (per shape, the fastest measured here; research/nn/lowering.py).
  config.model.lowering = "native"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20
  # Checkpoints: saved every N epochs and/or every N steps (0: off); the last step is always saved.
  # Every 10 here: a save blocks the loop while it copies the state, and saving every epoch costs
  # the loop a large share of its speed on the digits (measure it: `python run.py bench`, the loop
  # line). A crash loses at most 10 epochs.
  config.train.checkpoint_every_epochs = 10
  config.train.checkpoint_every_steps = 0
  config.train.keep_checkpoints = 3  # The newest N are kept,
  config.train.keep_best = 1  # and also the best N (0: none) by best_metric, a metrics.jsonl field,
  config.train.best_metric = "test_accuracy"
  config.train.best_mode = "max"  # whose largest ("max") or smallest ("min") value is best.
  # Several seeds (`run.py train --seeds`, `run.py ablate`) step together in one compiled call:
  # unrolled (one step per seed, written out; each seed's numbers bit for bit its own run's), vmap
  # (one step over the stacked seeds; equal to float tolerance) or auto (unrolled on CPU, where
  # vmapped convolutions are slower, as the README's measurement shows; vmap on GPU and TPU).
  config.train.seeds_together = "auto"
  # Each epoch, also log the gradient norm of every layer's parameters (metrics.jsonl and
  # TensorBoard, `grad_norm/<layer>`) on a fixed probe batch, the first batch_size training
  # examples.
  config.train.log_grad_norms = False

  # Several processes (hosts) training as one: research/training/distributed.py's defaults.
  config.distributed = distributed.defaults()
  return config
