"""A PyTorch twin of the reference CNN: the same function as the config's `cnn` model, with the
JAX model's weights copied in, so that `run.py bench` can set PyTorch eager's speed beside the JAX
train step's with the same numerics (`measure.twin_step` steps and times it).

torch is an optional extra (`pip install .[peer]`), never a dependency: this module imports without
it, and everything that needs it imports it when called. `available()` says whether it is there.

- `twin(config, variables)`: a `torch.nn.Module` equal to the config's `cnn` model, with the JAX
  model's `variables` (`params` and `batch_stats`) copied in. Like the JAX model it takes images
  `[batch, height, width, channels]` float32 and returns logits `[batch, num_classes]`.
- `load_variables(module, variables)` copies JAX variables in; `variables_of(module)` gives the
  twin's weights (or gradients) back in the JAX layout.
- `check(config)`: whether the twin reproduces a config (`Unsupported` names the key if not).

Conventions the twin translates (the JAX side is the reference):
- Layout: JAX is channels-last, images `[b, h, w, c]` and conv kernels `[kh, kw, c_in, c_out]`;
  torch's conv weight is `[c_out, c_in, kh, kw]`. The twin permutes its input to `[b, c, h, w]`, a
  view that is torch's channels_last memory format, and runs in that format.
- Flatten before the dense head: JAX flattens `[b, h, w, c]` row-major (channel fastest); the twin
  permutes back to `[b, h, w, c]` before flattening (a free view in channels_last), so the dense
  kernel `[h*w*c, hidden]` is copied transposed, its rows in JAX's order.
- BatchNorm (`nn.blocks._norm`): flax's momentum 0.9 keeps 0.9 of the running statistics, torch's
  momentum is the share of the new batch: 0.1. epsilon is 1e-5 in both. In training mode both
  normalize by the biased batch variance, but torch's BatchNorm2d updates its running variance with
  the unbiased one (n / (n - 1) larger); the twin's BatchNorm updates it with the biased one,
  as flax does.
- Activations are jax's: gelu is the tanh approximation (torch's `approximate="tanh"`; torch's
  default is the exact erf form), leaky_relu's slope is `model.negative_slope`. At exactly 0 jax's
  leaky_relu has slope 1 and torch's `negative_slope` (a difference on a set of measure zero).
"""

import functools
import types
from typing import Any

import ml_collections
import numpy as np

from research import trees

# The model fields the twin reproduces; any other field of `config.model` is refused, so that a
# field added to the JAX model later cannot be silently left out of the twin.
MODEL_FIELDS = frozenset(
  {
    "name",
    "widths",
    "hidden",
    "block",
    "kernel_size",
    "padding",
    "activation",
    "negative_slope",
    "norm",
    "head",
    "lowering",  # How XLA computes a convolution: the same numbers, nothing for the twin to do.
    "reduction",  # The bottleneck's only, a block the twin does not have.
    "stage_blocks",  # Empty only (checked below): `block` everywhere.
  }
)
BLOCKS = ("conv", "factorized")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "identity", "elu", "silu")
# `research.nn.blocks._norm`: flax.linen.BatchNorm(momentum=0.9), epsilon at flax's default.
FLAX_BATCHNORM_MOMENTUM = 0.9
FLAX_BATCHNORM_EPSILON = 1e-5
# Block class names as flax names their instances in `models.CNN` (`ConvBlock_0`, ...).
_BLOCK_SCOPES = {"conv": "ConvBlock", "factorized": "Factorized"}


class Unsupported(ValueError):
  """The twin does not reproduce this config; `key` names the config key (`model.block`)."""

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"config.{key}: {message}")


def available() -> bool:
  """Whether torch imports (the `peer` extra is installed)."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


@functools.cache
def torch_parts() -> types.SimpleNamespace:
  """torch, `torch.nn.functional` as `F`, and the twin's module classes (defined here, so that
  this module imports without torch)."""
  import torch
  import torch.nn.functional as F

  class FlaxBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d over `[b, c, h, w]` with flax.linen.BatchNorm's running-statistics update:
    `running = m * running + (1 - m) * batch` with flax's momentum `m`, and the batch's biased
    variance (torch's BatchNorm2d uses the unbiased one for its running variance)."""

    def __init__(self, features: int, flax_momentum: float, eps: float):
      super().__init__(features, eps=eps, momentum=1 - flax_momentum)
      self.flax_momentum = flax_momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      if not self.training:
        return super().forward(x)
      with torch.no_grad():
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        m = self.flax_momentum
        self.running_mean.mul_(m).add_(mean, alpha=1 - m)
        self.running_var.mul_(m).add_(var, alpha=1 - m)
      return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

  class Twin(torch.nn.Module):
    """`models.CNN` in torch: [block -> avg-pool 2x2] per width -> flatten (in JAX's order) ->
    dense hidden -> activation -> dense classes. `forward(image)`: `[b, h, w, c]` float32 ->
    logits `[b, num_classes]`.

    `entries` lists, for each JAX variable, `(collection, path, torch name, layout)`: where it
    lives in the torch module and how it is laid out (`conv`, `dense` or `vector`).
    """

    def __init__(self, blocks: list, head: torch.nn.Module, entries: list):
      super().__init__()
      self.blocks = torch.nn.ModuleList(blocks)
      self.head = head
      self.entries = entries

    def forward(self, image: torch.Tensor) -> torch.Tensor:
      x = image.permute(0, 3, 1, 2)  # [b, c, h, w]; a view, in channels_last memory format.
      for block in self.blocks:
        x = F.avg_pool2d(block(x), 2, 2)
      return self.head(x.permute(0, 2, 3, 1).flatten(1))  # JAX's flatten order: h, w, c.

  activations = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "gelu": functools.partial(torch.nn.GELU, approximate="tanh"),  # jax.nn.gelu's default.
    "leaky_relu": torch.nn.LeakyReLU,
    "identity": torch.nn.Identity,
    "elu": torch.nn.ELU,
    "silu": torch.nn.SiLU,
  }
  return types.SimpleNamespace(
    torch=torch, F=F, FlaxBatchNorm=FlaxBatchNorm, Twin=Twin, activations=activations
  )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `Unsupported` (a `ValueError` naming the key) unless the twin reproduces the model of
  `config` (an experiment config or its `model` section): `cnn`, blocks conv or factorized, the
  dense head, padding SAME or VALID, an activation of `ACTIVATIONS`. Needs no torch."""
  model = config.model if "model" in config else config
  if model.name != "cnn":
    raise Unsupported("model.name", f"the torch twin is of the cnn model only, not {model.name!r}")
  extra = sorted(set(model.keys()) - MODEL_FIELDS)
  if extra:
    raise Unsupported(f"model.{extra[0]}", "the torch twin does not reproduce this field")
  if model.get("stage_blocks"):
    raise Unsupported("model.stage_blocks", "the torch twin has one block for every stage")
  if model.get("block", "conv") not in BLOCKS:
    raise Unsupported("model.block", f"the torch twin has blocks {BLOCKS}, not {model.block!r}")
  if model.get("head", "dense") != "dense":
    raise Unsupported("model.head", f"the torch twin has the dense head only, not {model.head!r}")
  if model.get("activation", "relu") not in ACTIVATIONS:
    raise Unsupported("model.activation", f"the torch twin has {ACTIVATIONS}")
  padding = model.get("padding", "SAME")
  if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
    raise Unsupported("model.padding", f"the torch twin takes SAME or VALID, not {padding!r}")


def _to_torch(array: Any, layout: str) -> np.ndarray:
  """A JAX variable as its torch tensor's values: conv `[kh, kw, in, out]` -> `[out, in, kh, kw]`,
  dense `[in, out]` -> `[out, in]`, vectors unchanged."""
  array = np.asarray(array, np.float32)
  if layout == "conv":
    return array.transpose(3, 2, 0, 1)
  return array.T if layout == "dense" else array


def _to_jax(array: np.ndarray, layout: str) -> np.ndarray:
  """The inverse of `_to_torch`."""
  if layout == "conv":
    return array.transpose(2, 3, 1, 0)
  return array.T if layout == "dense" else array


def twin(config: ml_collections.ConfigDict, variables: dict, channels_last: bool = True) -> Any:
  """A `torch.nn.Module` equal to the config's `cnn` model with the JAX model's `variables`
  (`{"params": ..., "batch_stats": ...}`, as `model.init` gives them) copied in.

  `config` is an experiment config (or its `model` section). The module maps `[b, h, w, c]` float32
  images to logits `[b, num_classes]`, in training mode (`.train()`, BatchNorm on batch statistics,
  updating its running ones) or inference mode (`.eval()`). The channel counts are read from
  `variables`; every variable must have its place in the twin and every place a variable, else a
  `ValueError`. With `channels_last`, parameters and activations are in torch's channels_last
  memory format (faster on CPU; the numbers are the same). An unsupported config is an
  `Unsupported` error naming the key (`check`).
  """
  check(config)
  t = torch_parts()
  nn = t.torch.nn
  model = config.model if "model" in config else config
  params = variables["params"]
  act = t.activations[model.get("activation", "relu")]
  if model.get("activation", "relu") == "leaky_relu":
    act = functools.partial(act, negative_slope=model.get("negative_slope", 0.01))
  padding = model.get("padding", "SAME").upper()
  norm = model.get("norm", False)
  block_name = model.get("block", "conv")
  entries, blocks = [], []

  def shape(path: tuple) -> tuple[int, ...]:
    try:
      return np.shape(functools.reduce(lambda tree, key: tree[key], path, params))
    except (KeyError, TypeError):
      raise ValueError(
        f"the JAX variables lack params/{'/'.join(path)}, which the torch twin needs"
      ) from None

  def conv(scope: tuple, name: str, layers: list) -> int:
    """Appends the conv `scope/name` to `layers` (after a zero pad where SAME is uneven);
    returns its output channels."""
    kernel = shape(scope + (name, "kernel"))
    if len(kernel) != 4:
      raise Unsupported("model", f"the torch twin is 2-d only; kernel {kernel} at {scope}")
    kh, kw, c_in, c_out = kernel
    # JAX's SAME pads (k - 1) // 2 before and the rest after; VALID nothing.
    lo = (0, 0) if padding == "VALID" else ((kh - 1) // 2, (kw - 1) // 2)
    hi = (0, 0) if padding == "VALID" else (kh - 1 - lo[0], kw - 1 - lo[1])
    if lo != hi:  # An even kernel: one more row and column after, by an explicit pad.
      layers.append(nn.ZeroPad2d((lo[1], hi[1], lo[0], hi[0])))
    torch_name = f"blocks.{len(blocks)}.{len(layers)}"
    layers.append(nn.Conv2d(c_in, c_out, (kh, kw), padding=lo if lo == hi else 0, bias=not norm))
    entries.append(("params", scope + (name, "kernel"), f"{torch_name}.weight", "conv"))
    if not norm:
      entries.append(("params", scope + (name, "bias"), f"{torch_name}.bias", "vector"))
    return c_out

  def batch_norm(scope: tuple, name: str, layers: list, features: int) -> None:
    """Appends the BatchNorm `scope/name` (`features` channels) to `layers`."""
    path, torch_name = scope + (name,), f"blocks.{len(blocks)}.{len(layers)}"
    entries.append(("params", path + ("scale",), f"{torch_name}.weight", "vector"))
    entries.append(("params", path + ("bias",), f"{torch_name}.bias", "vector"))
    entries.append(("batch_stats", path + ("mean",), f"{torch_name}.running_mean", "vector"))
    entries.append(("batch_stats", path + ("var",), f"{torch_name}.running_var", "vector"))
    layers.append(t.FlaxBatchNorm(features, FLAX_BATCHNORM_MOMENTUM, FLAX_BATCHNORM_EPSILON))

  convs = 2 if block_name == "factorized" else 1  # Factorized (2-d): Kx1 -> 1xK.
  for i in range(len(model.widths)):
    scope = (f"{_BLOCK_SCOPES[block_name]}_{i}",)
    layers = []
    for j in range(convs):
      features = conv(scope, f"Conv_{j}", layers)
      if norm:
        batch_norm(scope, f"BatchNorm_{j}", layers, features)
    layers.append(act())  # The factorized pair's middle has no activation (mid_activation None).
    blocks.append(nn.Sequential(*layers))
  head = []
  for j in range(2):
    path = ("DenseHead_0", f"Dense_{j}")
    c_in, c_out = shape(path + ("kernel",))
    head.append(nn.Linear(c_in, c_out))
    entries.append(("params", path + ("kernel",), f"head.{len(head) - 1}.weight", "dense"))
    entries.append(("params", path + ("bias",), f"head.{len(head) - 1}.bias", "vector"))
    if j == 0:
      head.append(act())
  module = t.Twin(blocks, nn.Sequential(*head), entries)
  load_variables(module, variables)
  if channels_last:
    module = module.to(memory_format=t.torch.channels_last)
  return module


def _tensor(module: Any, name: str) -> Any:
  try:
    return module.get_parameter(name)
  except AttributeError:
    return module.get_buffer(name)


def load_variables(module: Any, variables: dict) -> None:
  """Copies JAX `variables` into the twin `module` in place (see `twin`); a variable missing from
  either side, or of another shape, is a `ValueError` naming its path."""
  torch = torch_parts().torch
  given = {
    (collection,) + path: leaf
    for collection in ("params", "batch_stats")
    for path, leaf in trees.leaves(variables.get(collection) or {})
  }
  wanted = {(collection,) + path for collection, path, _, _ in module.entries}
  extra = sorted(set(given) - wanted)
  if extra:
    raise ValueError(f"the torch twin has no place for the JAX variable {'/'.join(extra[0])}")
  with torch.no_grad():
    for collection, path, name, layout in module.entries:
      key = (collection,) + path
      if key not in given:
        raise ValueError(f"the JAX variables lack {'/'.join(key)}, which the torch twin needs")
      values = _to_torch(given[key], layout)
      target = _tensor(module, name)
      if tuple(target.shape) != values.shape:
        raise ValueError(
          f"{'/'.join(key)} has shape {np.shape(given[key])}; the twin's {name} needs "
          f"{tuple(_to_jax(np.zeros(target.shape), layout).shape)}"
        )
      target.copy_(torch.from_numpy(np.array(values, np.float32)))  # A writable copy.


def variables_of(module: Any, grads: bool = False) -> dict:
  """The twin's weights in the JAX layout: `{"params": ..., "batch_stats": ...}` of float32 NumPy
  arrays, nested as the JAX model's (`batch_stats` `{}` without BatchNorm). With `grads`, the
  gradients of the last backward pass instead: `{"params": ...}` (zeros where there is none)."""
  flat: dict[str, dict[tuple, np.ndarray]] = (
    {"params": {}} if grads else {"params": {}, "batch_stats": {}}
  )
  for collection, path, name, layout in module.entries:
    if collection not in flat:
      continue
    tensor = _tensor(module, name)
    if grads:
      tensor = tensor.grad if tensor.grad is not None else tensor.detach() * 0
    values = tensor.detach().cpu().numpy()
    flat[collection][path] = np.ascontiguousarray(_to_jax(values, layout))
  return {collection: trees.unflatten(leaves) for collection, leaves in flat.items()}
