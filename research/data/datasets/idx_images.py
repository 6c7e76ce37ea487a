"""TFDS builders for the 28x28 grayscale datasets shipped as IDX files: Fashion-MNIST, MNIST and
KMNIST.

They prepare from four local files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, gzipped or not) in TFDS's manual
directory, so no network is needed: `research.data.prepare` passes the directory it found them in
(`config.data.source_dir`, else the dataset's usual place, `/usr/share/datasets/fashion-mnist` for
Debian's `dataset-fashion-mnist`). The files are checked by `research.data.idx`.

Why builders of our own and not TFDS's `fashion_mnist`: TFDS's builder stores `tfds.features.Image`
(PNG, which needs TensorFlow, a large install, to encode) and its downloader rejects Debian's
files, which were recompressed (their checksums differ though the content is the same). These store
the pixels as `tfds.features.Tensor`, with no TensorFlow. They are named `<dataset>_idx` so that a
data dir shared with a networked TFDS install never holds two different things under TFDS's own
name.

Features: `image` uint8 `[28, 28, 1]` (0..255), `label` in 0..9; the splits keep the files' order
(`disable_shuffling`), example `i` of a split being record `i` of its files.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data import idx

SHAPE = (28, 28)
NUM_CLASSES = 10


class _IdxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A 28x28x1, 10-class dataset from its four IDX files in the manual dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prepared from the IDX files, in their order."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "A directory holding the four *-ubyte(.gz) IDX files."
  NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
  HOMEPAGE = ""
  CLASS_NAMES: tuple[str, ...] = tuple(str(i) for i in range(NUM_CLASSES))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=f"{type(self).__name__}: {type(self).__doc__}",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(*SHAPE, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=self.HOMEPAGE,
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    # Every file is read and checked before anything is written: a bad one fails fast.
    arrays = {
      split: idx.read_split(
        str(dl_manager.manual_dir), split, SHAPE, NUM_CLASSES, count=self.NUM_EXAMPLES[split]
      )
      for split in idx.FILES
    }
    return {split: self._generate_examples(*arrays[split]) for split in idx.FILES}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


class FashionMnistIdx(_IdxImages):
  """Zalando's Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70,000 28x28 grayscale images of
  clothing in 10 classes, 6,000 train and 1,000 test images each."""

  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
  )  # fmt: skip


class MnistIdx(_IdxImages):
  """LeCun, Cortes and Burges's MNIST: 70,000 28x28 grayscale handwritten digits."""

  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class KmnistIdx(_IdxImages):
  """Kuzushiji-MNIST (Clanuwat et al., 2018): 70,000 28x28 grayscale cursive Japanese characters."""

  HOMEPAGE = "https://github.com/rois-codh/kmnist"
