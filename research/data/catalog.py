"""`python run.py data`: the datasets this project knows, whether and where each is prepared.

Three kinds: the embedded digits (prepared from scikit-learn), the IDX datasets (prepared from local
files: Fashion-MNIST, MNIST, KMNIST) and any TFDS dataset by name (prepared on a machine with
network, or downloaded with `--config.data.download=True`).
"""

import os

import ml_collections

from research.data import builders, idx, prepare, splits


def _entry(config: ml_collections.ConfigDict, name: str, kind: str) -> dict:
  """One dataset's row: prepared where (or None), its IDX files' directory, split sizes, shape."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.name = name
  builder = prepare.get_builder(config, prepare=False)
  info = splits.describe_builder(builder)  # Static metadata: nothing prepared or read.
  prepared = builder.is_prepared()
  files = None
  if name in builders.IDX_BUILDERS:
    files = next((d for d in builders.source_dirs(config) if idx.find(d, "train")), None)
  return {
    "name": name,
    "kind": kind,
    "prepared": str(builder.data_dir) if prepared else None,
    "builder": builder.name,
    "idx_files": files,
    "num_train": info.num_train,
    "num_test": info.num_test,
    "shape": list(info.shape),
    "num_classes": info.num_classes,
  }


def catalog(config: ml_collections.ConfigDict) -> dict:
  """The known datasets (`entries`) and the other TFDS datasets prepared in the data dir."""
  entries = [_entry(config, name, "embedded") for name in builders.OFFLINE_BUILDERS]
  entries += [_entry(config, name, "IDX files") for name in builders.IDX_BUILDERS]
  root = builders.data_dir(config)
  known = {e["builder"] for e in entries} | {e["name"] for e in entries}
  others = sorted(
    name
    for name in (os.listdir(root) if os.path.isdir(root) else ())
    if name not in known and name != "downloads" and os.path.isdir(os.path.join(root, name))
  )
  return {"data_dir": root, "datasets": entries, "other_prepared": others}


def describe(report: dict) -> str:
  """The catalog as text, one dataset a line."""
  lines = [f"TFDS data dir: {report['data_dir']}", ""]
  header = f"{'name':<16}{'kind':<11}{'train/test':<14}{'example':<10}{'classes':<9}prepared"
  lines.append(header)
  for e in report["datasets"]:
    sizes = "?" if e["num_train"] is None else f"{e['num_train']}/{e['num_test']}"
    if e["prepared"]:
      state = f"yes, {e['prepared']}"
    elif e["kind"] == "IDX files":
      state = (
        f"no; IDX files in {e['idx_files']}"
        if e["idx_files"]
        else "no; no IDX files found (set --config.data.source_dir)"
      )
    else:
      state = "no; prepared on first use"
    shape = "x".join(map(str, e["shape"]))
    lines.append(
      f"{e['name']:<16}{e['kind']:<11}{sizes:<14}{shape:<10}{e['num_classes']:<9}{state}"
    )
  others = ", ".join(report["other_prepared"]) or "none"
  lines += [
    "",
    f"Any other TFDS dataset: --config.data.name=NAME (other datasets in the data dir: {others}).",
    "Prepare one now: python run.py data prepare NAME",
  ]
  return "\n".join(lines)
