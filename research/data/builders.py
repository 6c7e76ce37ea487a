"""Which TFDS builder a dataset name gets, and where its data lives.

Three kinds of name: the embedded digits (`OFFLINE_BUILDERS`, prepared from files an installed
package ships), the IDX datasets (`IDX_BUILDERS`, prepared from four local files) and any other
TFDS dataset by name. A name TFDS cannot build is one `ConfigError` naming `data.name` and saying
why; nothing here prepares or reads a dataset (`research.data.prepare` does).
"""

import os
import re

import ml_collections
import tensorflow_datasets as tfds

from research.data.datasets import idx_images, sklearn_digits
from research.errors import ConfigError, first_line

# Builders that prepare from files an installed package ships: no network, no `download` needed.
OFFLINE_BUILDERS = {"sklearn_digits": sklearn_digits.SklearnDigits}
# Datasets prepared from their IDX files (`research.data.datasets.idx_images`), and where the files
# usually are when `config.data.source_dir` is not set.
IDX_BUILDERS = {
  "fashion_mnist": idx_images.FashionMnistIdx,
  "mnist": idx_images.MnistIdx,
  "kmnist": idx_images.KmnistIdx,
}
IDX_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": (), "kmnist": ()}
# How to get each IDX dataset's files besides copying them: the start of a sentence.
IDX_HELP = {
  "fashion_mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`), or ",
  "mnist": "",
  "kmnist": "",
}
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


def data_dir(config: ml_collections.ConfigDict) -> str:
  """The TFDS data dir: `config.data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  chosen = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(chosen))


def source_dirs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Where the IDX files of `config.data.name` are looked for, in order."""
  chosen = config.data.get("source_dir")
  if chosen:
    return (os.path.abspath(os.path.expanduser(chosen)),)
  return IDX_DIRS.get(config.data.name, ())


def tfds_builder(name: str, root: str) -> tfds.core.DatasetBuilder:
  """TFDS's own builder for `name` in the data dir `root` (not prepared, maybe). A name TFDS cannot
  build (unknown, not a name, a config or version the dataset lacks) is one `ConfigError` saying
  why."""
  # TFDS's own parser lets some odd characters through (a trailing newline).
  if not re.fullmatch(r"[\w.:/*+=,-]+", name):
    raise ConfigError("data.name", f"{name!r} is not a dataset name: {_NAME_FORMAT}")
  try:
    return tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError:
    known = ", ".join([*OFFLINE_BUILDERS, *IDX_BUILDERS])
    raise ConfigError(
      "data.name", f"{name!r} is not a TFDS dataset (nor one of this project's: {known})"
    ) from None
  # What tfds.builder raises for a name it cannot parse or a config it lacks (ValueError), a
  # version it lacks (AssertionError), unknown builder arguments (TypeError), or a builder whose
  # module needs a package that is not installed (ImportError).
  except (ValueError, AssertionError, TypeError, ImportError) as e:
    raise ConfigError("data.name", _unbuildable(name, e)) from None


_NAME_FORMAT = (
  "TFDS takes NAME, NAME/CONFIG, NAME:VERSION or NAME/CONFIG:VERSION, NAME and CONFIG of letters, "
  "digits and underscores, VERSION as 1.2.3 (`python run.py data list` lists the datasets)"
)
# How much of TFDS's first line is read: enough for the builder's arguments that prefix the cause.
_QUOTED = 2000


def _unbuildable(name: str, e: Exception) -> str:
  """Why TFDS could not build a builder for `name` (it raised `e`), in one line."""
  line = first_line(e, with_type=False, limit=_QUOTED)
  if line.startswith("Parsing builder name string"):
    return f"{name!r} is not a dataset name: {_NAME_FORMAT}"
  # TFDS prefixes the cause with the builder's arguments: 'Failed to construct dataset "mnist",
  # builder_kwargs "{...}": '.
  line = re.sub(r'^Failed to construct dataset .*?builder_kwargs ".*?": ', "", line)
  if "BuilderConfig" in line and "not found" in line:
    line = re.sub(r"\s*Here are .*$", "", line).rstrip(".")
    try:
      configs = [c.name for c in tfds.builder_cls(re.split(r"[/:]", name)[0]).BUILDER_CONFIGS]
    except Exception:  # The list is a courtesy: without it the message still says what is wrong.
      configs = None
    if configs is not None:
      line += "; " + (f"its configs: {_some(configs)}" if configs else "it has no configs")
  return f"TFDS cannot build {name!r} ({type(e).__name__}: {line})"


def _some(names: list[str], shown: int = 10) -> str:
  """`names` joined by commas, at most `shown` of them, then how many more."""
  more = f" and {len(names) - shown} more" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more
