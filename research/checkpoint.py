"""Orbax checkpoints of a run: `<workdir>/checkpoints/<step>/` holding the train state and a JSON `meta`.

`meta` holds the epoch reached and the resolved config; the train state holds params, optimizer state,
batch statistics and the step. The data order is a function of (seed, epoch), so (state, epoch) is all a
resumed run needs.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from research.errors import CheckpointError


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager over `<workdir>/checkpoints` that keeps the newest `keep` steps and saves asynchronously."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Starts saving `state` and `meta` as `step`; returns before the write ends (async)."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[Any, dict] | None:
  """(state, meta) of the newest checkpoint restored onto `target`'s structure, or None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"checkpoint {manager.directory / str(step)} could not be restored "
                          f"({type(e).__name__}: {e})") from None
  return restored.state, restored.meta
