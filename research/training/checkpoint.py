"""Orbax checkpoints of a run: `<workdir>/checkpoints/<step>/`,
saved asynchronously and verified before use.

A step directory holds
- `state`: the `TrainState`: params, optimizer state, batch statistics, step and RNG key;
- `meta`: JSON: the data position (`epoch` completed, `batch_in_epoch`), the step metrics of the
  unfinished epoch, the evaluation `metrics` (at the end of an epoch) and the resolved `config`;
- `metrics`: Orbax's copy of the evaluation metrics, which it ranks to keep the best steps;
- `checksums.json`: bytes and SHA-256 of every other file, written at commit
  (`training.integrity`, which also verifies steps and quarantines the ones that fail).

The data order is a pure function of (seed, epoch) (`data.epoch_order`), so (state, meta) is all a
resumed run needs. `restore_newest` restores the newest step that verifies and reads back.
"""

import contextlib
import gc
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from research.errors import CheckpointError, CheckpointGone, first_line
from research.training.integrity import (
  TMP_MARK,
  directory,
  latest_valid,
  none_usable,
  seal,
  set_aside,
)


def due(
  step: int, steps_per_epoch: int, total_steps: int, every_steps: int, every_epochs: int
) -> bool:
  """Whether the policy saves after training step `step` (counted from 1);
  the last step is always saved.

  `every_steps` and `every_epochs` are 0 when off.
  """
  epoch_end = step % steps_per_epoch == 0
  return (
    step == total_steps
    or (every_steps > 0 and step % every_steps == 0)
    or (epoch_end and every_epochs > 0 and (step // steps_per_epoch) % every_epochs == 0)
  )


def make_manager(
  workdir: str,
  policy: ml_collections.ConfigDict,
  on_commit: Callable[[int], None] | None = None,
) -> ocp.CheckpointManager:
  """An async manager over `<workdir>/checkpoints` under the `config.train` policy: keeps the newest
  `keep_checkpoints` steps and the best `keep_best` by `best_metric`. Each save is sealed
  (`integrity.seal`) as it commits; `on_commit(step)` is called just before (`training.hooks`).

  Latest and best are two policies joined by `AnyPreservationPolicy`: `max_to_keep` with `best_fn`
  alone keeps only the best, and can delete a step right after saving it. `best_fn` is still set, as
  Orbax writes the metrics that `BestN` ranks (also after a restart) only when it is.
  """
  kept = [policies.LatestN(n=policy.keep_checkpoints)]
  best_fn = None
  if policy.keep_best:
    metric = policy.best_metric

    def best_fn(m):
      return m[metric]

    kept.append(
      policies.BestN(
        get_metric_fn=best_fn,
        reverse=policy.best_mode == "min",
        n=policy.keep_best,
        keep_checkpoints_without_metrics=False,
      )
    )
  root = directory(workdir)
  options = ocp.CheckpointManagerOptions(
    create=True,
    enable_async_checkpointing=True,
    preservation_policy=policies.AnyPreservationPolicy(kept),
    best_fn=best_fn,
    best_mode=policy.best_mode,
    async_options=ocp.AsyncOptions(post_finalization_callback=lambda: _commit(root, on_commit)),
  )
  return ocp.CheckpointManager(root, options=options)


def _commit(root: str, on_commit: Callable[[int], None] | None) -> None:
  """Orbax's post-finalization callback: the save in `root` is complete and about to be renamed."""
  if on_commit is not None:
    pending = [name for name in os.listdir(root) if TMP_MARK in name]
    if len(pending) == 1:
      on_commit(int(pending[0].split(".")[0]))
  seal(root)


def save(
  manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics: dict | None = None
) -> None:
  """Starts saving `state` and `meta` as `step` (with `metrics` to rank it by); returns once the
  state is copied to host memory, before the files are written. Waits for the previous save
  first."""
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    metrics=metrics,
    force=True,
  )


def snapshot(workdir: str, step: int, into: str) -> str:
  """Copies step `step` of `workdir` into the folder `into` and returns the copy's path: a copy that
  a live run's keep policy cannot delete while it is read. A `CheckpointGone` if the step was
  deleted before or while it was copied."""
  source, target = os.path.join(directory(workdir), str(step)), os.path.join(into, str(step))
  shutil.rmtree(target, ignore_errors=True)
  try:
    shutil.copytree(source, target)
  except (FileNotFoundError, shutil.Error):
    if not os.path.isdir(source):
      raise CheckpointGone(
        f"checkpoint {source} was deleted while it was read: a run training in {workdir} keeps "
        "only its newest and best steps and removed it"
      ) from None
    raise
  return target


def _read(workdir: str, step: int, items: dict, path: str | None = None) -> Any:
  path = path or os.path.join(directory(workdir), str(step))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  with _without_echoes():
    try:
      return checkpointer.restore(path, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types; what matters is below.
      if not os.path.isdir(path):
        raise CheckpointGone(
          f"checkpoint {path} was deleted while it was read: a run training in {workdir} keeps "
          "only its newest and best steps and removed it"
        ) from None
      raise Unrestorable(path, first_line(e)) from None
    finally:
      checkpointer.close()


# What Orbax (0.12) leaves behind when one array of a step fails to read: it raises at once and
# abandons the other reads, and each, closed when collected, raises again in its `finally`
# (`Exception ignored in: <coroutine object _read_array_index_and_device_put>`), as do
# TensorStore's callbacks into the closed event loop (`RuntimeError: Event loop is closed`).
ECHOES = ("_read_array_index_and_device_put",)


@contextlib.contextmanager
def _without_echoes() -> Iterator[None]:
  """Drops, while a step is read, the echoes (`ECHOES`) of a failed read that Python would print
  as tracebacks on stderr when they are collected: the failure is already one line
  (`Unrestorable`). The abandoned reads are collected before it returns; every other unraisable
  exception goes to the hook that was installed."""
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    name = getattr(getattr(unraisable.object, "cr_code", None), "co_name", None)
    closed = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == "Event loop is closed"
    )
    if name not in ECHOES and not closed:
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous


class Unrestorable(CheckpointError):
  """A step that passed its checksums but could not be restored (`why`: the cause, one line)."""

  def __init__(self, path: str, why: str):
    self.path, self.why = path, why
    super().__init__(f"checkpoint {path} passed its checksums but could not be restored ({why})")


def restore_newest(
  workdir: str, target: Any, check_meta: Callable[[int, dict], None] | None = None
) -> tuple[int, Any, dict] | None:
  """(step, state, meta) of the newest step that passes `verify` and restores onto `target`, or None
  when there is no step at all.

  Steps that fail their checksums are quarantined as by `latest_valid`. A step that passes them but
  cannot be read is corrupt too (garbage re-checksummed metadata, corrupt compressed data): once an
  older step restores, each such newer step is moved to quarantine with its reason. If the step's
  data reads back but not onto `target`, the model code changed: a `CheckpointError` saying to train
  into a new workdir, nothing moved. If no step restores, a `CheckpointError` naming each step
  and why, nothing moved. `check_meta(step, meta)` may refuse a step's meta (it raises).
  """
  failed = []
  while (
    step := latest_valid(workdir, quarantine=True, below=failed[-1][0] if failed else None)
  ) is not None:
    path = os.path.join(directory(workdir), str(step))
    try:
      meta = read_meta(workdir, step)
      if check_meta is not None:
        check_meta(step, meta)
      state, meta = restore(workdir, step, target)
    except Unrestorable as e:
      try:
        restore(workdir, step)  # As saved: the data is sound, so the state's structure changed.
      except Unrestorable:
        failed.append((step, e.why))
        continue
      raise CheckpointError(
        f"checkpoint {path} holds a train state of another structure than this code's model "
        f"({e.why}): the model code changed since it was saved; train into a new --workdir, or "
        "run the code it was saved with"
      ) from None
    for bad, why in failed:
      set_aside(workdir, bad, f"it passed its checksums but could not be restored ({why})", step)
    return step, state, meta
  if failed:
    raise none_usable(workdir, "no checkpoint restores", failed)
  return None


def read_meta(workdir: str, step: int, path: str | None = None) -> dict:
  """The `meta` of `step` (data position, unfinished epoch's step metrics, metrics, config), read
  from `path` if given (a `snapshot` of the step). Verify it first."""
  return _read(workdir, step, {"meta": ocp.args.JsonRestore()}, path).meta


def restore(
  workdir: str, step: int, target: Any = None, path: str | None = None
) -> tuple[Any, dict]:
  """(state, meta) of `step`, read from `path` if given (a `snapshot` of the step). With `target`,
  the state takes its tree structure, shapes, dtypes and shardings; without, it is restored as
  saved. Verify the step first (`verify`)."""
  abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = _read(
    workdir,
    step,
    {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()},
    path,
  )
  return restored.state, restored.meta
