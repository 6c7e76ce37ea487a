"""Nested mappings (configs as JSON, Flax variables) as flat ones, and back.

A path is the tuple of keys from the root to a leaf; `flatten(tree, ".")` joins it into a dotted
key (`"model.block"`), `flatten(tree)` keeps the tuple (`("params", "Conv_0", "kernel")`). Any
value without `.items()` is a leaf, so a `ConfigDict`, a dict and Flax's `FrozenDict` all walk the
same way.
"""

from collections.abc import Iterator
from typing import Any


def leaves(tree: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
  """(path, leaf) for every leaf under `tree`, in its insertion order."""
  if not hasattr(tree, "items"):
    yield prefix, tree
    return
  for key, value in tree.items():
    yield from leaves(value, (*prefix, key))


def flatten(tree: Any, sep: str | None = None) -> dict:
  """`{path: leaf}` of `tree`; with `sep`, each path joined into one string (`"a.b"`)."""
  return {(path if sep is None else sep.join(map(str, path))): leaf for path, leaf in leaves(tree)}


def unflatten(flat: dict[tuple, Any]) -> dict:
  """The nested dict of `{path: leaf}`: the inverse of `flatten(tree)` for a tree of dicts."""
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree
