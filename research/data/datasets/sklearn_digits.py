"""TFDS builder for scikit-learn's 1,797 real 8x8 handwritten digits (UCI optdigits test set).

The data ships inside scikit-learn, so preparing it needs no network. Split, fixed and documented:
example `i` (in `load_digits` order) is in `test` when `i % 5 == 0` (360 examples) and in `train`
otherwise (1,437 examples). The digits are ordered by writer, so every fifth one spreads the test
set over all writers and classes (each class has 34-37 test examples).

Features: `image` uint8 `[8, 8, 1]` with values 0..16 (ink counts of 4x4 blocks); `label` in 0..9.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_EVERY = 5
PIXEL_MAX = 16


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's `load_digits`, as a TFDS dataset with fixed train and test splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: test = every fifth example."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is inside scikit-learn.
    return {
      "train": self._generate_examples(test=False),
      "test": self._generate_examples(test=True),
    }

  def _generate_examples(self, test: bool):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
      if (i % TEST_EVERY == 0) == test:
        yield i, {"image": image.astype(np.uint8)[..., None], "label": int(label)}
