"""The default experiment: the reference CNN on the embedded 8x8 digits (scikit-learn, via TFDS)."""

import ml_collections
from ml_collections import config_dict


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
  # Every 10 here: an epoch of the digits takes about 55 ms, and a save blocks the loop about 10 ms
  # and then writes in the background for about 45 ms on the same 2 cores; saving every epoch cost
  # the loop 40-50% of its speed, every 5 epochs about 10% (`python run.py bench`, the loop line).
  # A crash loses at most 10 epochs, about 0.6 s.
  config.train.checkpoint_every_epochs = 10
  config.train.checkpoint_every_steps = 0
  config.train.keep_checkpoints = 3  # The newest N are kept,
  config.train.keep_best = 1  # and also the best N (0: none) by best_metric, a metrics.jsonl field,
  config.train.best_metric = "test_accuracy"
  config.train.best_mode = "max"  # whose largest ("max") or smallest ("min") value is best.
  # Several seeds (`run.py train --seeds`, `run.py ablate`) step together in one compiled call:
  # unrolled (one step per seed, written out; each seed's numbers bit for bit its own run's), vmap
  # (one step over the stacked seeds; equal to float tolerance) or auto (unrolled on CPU, where
  # vmapped convolutions ran 7-21x slower; vmap on GPU and TPU).
  config.train.seeds_together = "auto"
  # Each epoch, also log the gradient norm of every layer's parameters (metrics.jsonl and
  # TensorBoard, `grad_norm/<layer>`) on a fixed probe batch, the first batch_size training
  # examples.
  config.train.log_grad_norms = False

  # Several processes (hosts) training as one (research/training/distributed.py). None: from
  # $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID; none set: one process.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator = config_dict.placeholder(str)  # host:port of process 0.
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)  # This process's, from 0.
  # True: JAX finds what is unset from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU pods).
  config.distributed.cluster_detection = False
  config.distributed.timeout_seconds = 300  # How long a process waits for the others to join.
  return config
