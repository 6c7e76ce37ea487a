"""A prepared builder for the configured dataset: prepared once, from IDX files or by download.

`get_builder` prepares what needs no network (the embedded digits, an IDX dataset whose files are
found), and downloads a TFDS dataset only where `config.data.download` allows it. TFDS writes into
a temporary directory and renames it when complete, so an interrupted preparation is never read
and the next run prepares again.

Preparing holds an exclusive lock, `<data dir>/<builder name>.prepare.lock` (an flock, through
`filelock`: the kernel drops it when its holder dies, however it dies): runs that share a data dir
prepare each dataset once, and the others wait for it and then read it. The lock file is kept
afterwards (an empty file; the catalog lists only directories): removing it could let a process
that opened it before the removal and one that creates it anew hold "the" lock at once.
"""

import contextlib
import errno
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator

import filelock
import ml_collections
import requests
import tensorflow_datasets as tfds

from research.data import idx
from research.data.builders import (
  IDX_BUILDERS,
  IDX_HELP,
  OFFLINE_BUILDERS,
  data_dir,
  source_dirs,
  tfds_builder,
)
from research.errors import DataError, first_line

log = logging.getLogger(__name__)

# How long one download host may take to answer before it counts as unreachable.
PROBE_SECONDS = 5.0
# What flock(2) fails with on a filesystem that does not implement it.
NO_LOCKING = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}


def get_builder(
  config: ml_collections.ConfigDict, prepare: bool = True
) -> tfds.core.DatasetBuilder:
  """The builder for `config.data.name`. With `prepare`, a prepared one, preparing it first when
  that needs no network (or when `config.data.download` allows it); without, possibly unprepared."""
  name, root = config.data.name, data_dir(config)
  if name in OFFLINE_BUILDERS:

    def make() -> tfds.core.DatasetBuilder:
      return OFFLINE_BUILDERS[name](data_dir=root, file_format="array_record")

    builder = make()
    if prepare and not builder.is_prepared():
      return _prepare_once(builder, make, root, lambda b: b.download_and_prepare())
    return builder
  if name in IDX_BUILDERS:
    builder = tfds_builder(name, root)
    if builder.is_prepared():  # TFDS's own, prepared on a networked machine: read as it is.
      return builder
    builder = IDX_BUILDERS[name](data_dir=root, file_format="array_record")
    if builder.is_prepared() or not prepare:
      return builder
    directory = next((d for d in source_dirs(config) if idx.find(d, "train")), None)
    if directory is not None:
      return _prepare_from_idx(builder, directory, root)
    if not config.data.download:
      dirs = source_dirs(config)
      where = f"are not in {', '.join(dirs)}" if dirs else "have no usual place"
      raise DataError(
        f"dataset {name!r} is not prepared in {root}, and its IDX files "
        f"({idx.FILES['train'][0]}.gz and the three others) {where}: "
        f"{IDX_HELP[name]}put the four files in a directory and pass "
        "--config.data.source_dir=DIR, or pass --config.data.download=True where this machine "
        "has network."
      )
    return _download(tfds_builder(name, root), root)
  builder = tfds_builder(name, root)
  if builder.is_prepared() or not prepare:
    return builder
  if not config.data.download:
    raise DataError(
      f"TFDS dataset {name!r} is not prepared in {root} and downloading is off: prepare it on a "
      f"machine with network (`tfds build {name} --file_format=array_record --data_dir={root}`, "
      "then copy that directory here), or pass --config.data.download=True where this machine "
      "has network."
    )
  return _download(builder, root)


def prepare(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Prepares `config.data.name` into the data dir unless it is (`python run.py data prepare`)."""
  return get_builder(config)


@contextlib.contextmanager
def _preparing(root: str, name: str) -> Iterator[None]:
  """Holds the exclusive lock on preparing dataset `name` in the data dir `root`, waiting for
  another process that holds it. Creates `root` where it does not exist."""
  try:
    os.makedirs(root, exist_ok=True)
  except FileExistsError:
    raise DataError(
      f"the data dir {root} is a file, not a directory: pass --config.data.data_dir=DIR with a "
      "directory, or move the file."
    ) from None
  except OSError as e:
    raise DataError(
      f"the data dir {root} cannot be created ({e.strerror or e}): pass "
      "--config.data.data_dir=DIR with a directory this user can write."
    ) from None
  path = os.path.join(root, f"{name}.prepare.lock")
  # Where flock is missing: the one-line error below, not `filelock`'s soft lock, which the kernel
  # does not release when its holder dies.
  lock = filelock.FileLock(path, fallback_to_soft=False)
  try:
    try:
      lock.acquire(blocking=False)
    except filelock.Timeout:
      log.info(f"waiting for another process preparing {name} in {root}")
      lock.acquire()
  except OSError as e:
    if e.errno in NO_LOCKING:
      raise DataError(
        f"cannot lock {path} ({e.strerror or e}): this filesystem may not support flock; pass "
        "--config.data.data_dir=DIR with a directory on a local disk."
      ) from None
    raise DataError(
      f"the data dir {root} is not a writable directory: cannot open the lock file {path} "
      f"({e.strerror or e}); pass --config.data.data_dir=DIR with a directory this user can write."
    ) from None
  try:
    yield
  finally:
    lock.release()


def _prepare_once(
  builder: tfds.core.DatasetBuilder,
  make: Callable[[], tfds.core.DatasetBuilder],
  root: str,
  prepare: Callable[[tfds.core.DatasetBuilder], None],
) -> tfds.core.DatasetBuilder:
  """The dataset of `builder` (found unprepared) prepared by `prepare`, unless another process did
  it first: holding the lock on preparing it, a fresh builder from `make` (a builder reads only
  what was prepared before it was made) is checked again and prepared only if it still is not.
  Returns the fresh builder."""
  with _preparing(root, builder.name):
    builder = make()
    if builder.is_prepared():
      log.info(f"Another process prepared {builder.name} in {root}: reading it from there.")
    else:
      prepare(builder)
  return builder


def _prepare_from_idx(
  builder: tfds.core.DatasetBuilder, directory: str, root: str
) -> tfds.core.DatasetBuilder:
  """Prepares `builder` from the IDX files in `directory`, once."""

  def prepare(builder: tfds.core.DatasetBuilder) -> None:
    log.info(f"Preparing {builder.name} from the IDX files in {directory} into "
             f"{builder.data_dir} (once; later runs read it from there).")  # fmt: skip
    started = time.perf_counter()
    config = tfds.download.DownloadConfig(manual_dir=directory)
    builder.download_and_prepare(download_config=config)
    log.info(f"Prepared {builder.name} in {time.perf_counter() - started:.1f} s.")

  kind = type(builder)
  return _prepare_once(
    builder, lambda: kind(data_dir=root, file_format="array_record"), root, prepare
  )


def _unreachable(builder: tfds.core.DatasetBuilder) -> str | None:
  """The first of `builder`'s download hosts (from its checksums file) that does not answer an HTTP
  HEAD within `PROBE_SECONDS`, with the reason; None when all answer or the URLs are not known.

  Any HTTP answer, an error status included, counts as reachable: only a failure to connect does
  not. Proxies set in the environment (`HTTPS_PROXY`, ...) are used, as TFDS's downloader uses them.
  Without this probe, TFDS retries an unreachable host with exponential backoff for minutes and
  leaves partial files behind.
  """
  urls = {}
  for url in builder.url_infos or {}:
    urls.setdefault(urllib.parse.urlsplit(url).netloc, url)
  for host, url in urls.items():
    try:
      requests.head(url, timeout=PROBE_SECONDS, allow_redirects=False).close()
    except requests.RequestException as e:
      cause = e.args[0] if e.args else e  # urllib3's MaxRetryError, whose `reason` says why.
      cause = getattr(cause, "reason", cause)
      return f"{host} could not be reached ({type(cause).__name__})"
  return None


def _download(builder: tfds.core.DatasetBuilder, root: str) -> tfds.core.DatasetBuilder:
  """`builder` downloaded and prepared into `root`, failing within seconds, with nothing written,
  when its download hosts cannot be reached; a download that fails later leaves no partial files
  (what it added under `<root>/downloads/<name>` and `<root>/<name>` is removed)."""
  name = builder.name
  unreachable = _unreachable(builder)
  if unreachable:
    raise DataError(
      f"could not download TFDS dataset {name!r}: {unreachable}; check the network (or the "
      f"proxy), or prepare it elsewhere with `tfds build {name}` and copy it into {root}."
    )

  def prepare(builder: tfds.core.DatasetBuilder) -> None:
    ours = [os.path.join(root, "downloads", name), os.path.join(root, name)]
    before = {path: _tree(path) for path in ours}
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:
      for path in ours:
        _remove_new(path, before[path])
      raise DataError(
        f"could not download TFDS dataset {name!r} into {root} ({first_line(e)}); "
        f"check the network, or prepare it elsewhere with `tfds build {name}`."
      ) from None

  return _prepare_once(builder, lambda: tfds_builder(name, root), root, prepare)


def _tree(path: str) -> set[str]:
  """Every file and directory under `path`, `path` included; empty when it does not exist."""
  found = {path} if os.path.exists(path) else set()
  for parent, dirs, files in os.walk(path):
    found.update(os.path.join(parent, n) for n in dirs + files)
  return found


def _remove_new(path: str, before: set[str]) -> None:
  """Removes what is under `path` now but was not in `before` (deepest first)."""
  for new in sorted(_tree(path) - before, key=len, reverse=True):
    with contextlib.suppress(OSError):
      os.rmdir(new) if os.path.isdir(new) else os.remove(new)
