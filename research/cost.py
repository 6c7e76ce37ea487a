"""What a block or model costs, measured three ways: analytic counts, XLA's count, and the clock.

For each subject (a block variant at an input shape, or a config's model) and each pass
  forward           apply, inference mode
  forward_backward  forward plus the vector-Jacobian product for a given output cotangent: gradients
                    of the parameters and (blocks, which sit inside a network) of the input
  train_step        forward_backward plus the optimizer update (a model: `research.train.train_step`)
the report holds the analytic FLOPs (`research.flops`, primary), XLA's FLOPs and bytes accessed
(`compiled.cost_analysis()`, the cross-check), the compiled peak memory (`memory_analysis()`) and the
seconds per call of the compiled function (`research.timing`). The table puts every figure's ratio to
a reference variant (the full 3x3) beside the analytic one, time beside FLOPs, because on a CPU they
part: a 3x1+1x3 pair does 2/3 of a 3x3's FLOPs but moves twice its bytes, and is not faster.

`run(config)` returns a JSON-ready report (`COST_SCHEMA`); `format_report` renders it as text.
`bench(config)` times the training step of a config's model and optimizer (`BENCH_SCHEMA`).
"""

import dataclasses
import itertools
import math
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import activations, blocks, flops, shapes, timing
from research import config as config_lib
from research.errors import ConfigError, UserError
from research.models import build_model
from research.optim import build_optimizer

# research.data and research.train (TFDS, Orbax: 1.5 s to import) are imported where a model is costed,
# so that `run.py cost` on block tables starts faster.

PASSES = ("forward", "forward_backward", "train_step")
PASS_NAMES = {"forward": "forward", "forward_backward": "fwd+bwd", "train_step": "train step"}
_ACTIVATION_FIELDS = ("activation", "mid_activation")
MODEL_WARMUP = 2  # Untimed calls per pass when costing a config's model (which has no `cost` section).


class Stack(nn.Module):
  """Blocks applied in order, `[b, *s, c]` -> the last block's output (a variant of several blocks)."""

  layers: tuple[nn.Module, ...]

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:  # pylint: disable=redefined-outer-name
    for layer in self.layers:
      x = layer(x, train)
    return x


@dataclasses.dataclass
class Subject:
  """A module at one input shape: its counted layers, parameters, and each pass as (function, arguments)."""

  label: str
  layers: list[flops.Layer]
  totals: flops.Totals
  passes: dict[str, tuple[Callable[..., Any], tuple]]


# ---------------------------------------------------------------------------------------------------
# XLA's figures.


def xla_cost(compiled) -> dict:
  """`{"flops", "bytes_accessed"}` from `compiled.cost_analysis()`, each None where the backend gives none.

  The format varies: a dict (jax 0.10 on CPU), a list with one dict per computation (older jax), or
  None; some GPU backends report -1 for unknown.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Unimplemented on some backends.
    analysis = None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None

  def value(key):
    v = analysis.get(key) if isinstance(analysis, dict) else None
    return float(v) if v is not None and v >= 0 else None

  return {"flops": value("flops"), "bytes_accessed": value("bytes accessed")}


def peak_memory(compiled) -> Optional[int]:
  """Peak bytes the compiled computation holds (arguments, outputs and temporaries), None if unknown."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    return int(peak)
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)


def compile_pass(fn: Callable[..., Any], args: tuple) -> tuple[Any, dict]:
  """`fn` compiled for `args`, with XLA's FLOPs and bytes accessed and the peak memory bytes."""
  compiled = jax.jit(fn).lower(*args).compile()
  xla = xla_cost(compiled)
  return compiled, {"xla_flops": xla["flops"], "xla_bytes": xla["bytes_accessed"], "peak_bytes": peak_memory(compiled)}


# ---------------------------------------------------------------------------------------------------
# Subjects: block variants and models.


def _split(variables: dict) -> tuple[Any, dict]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _train_apply(module: nn.Module, params, rest: dict, x):
  """`module` in training mode; BatchNorm statistics are computed but their update is dropped."""
  out = module.apply({"params": params, **rest}, x, train=True, mutable=list(rest) or False)
  return out[0] if rest else out


def _passes(module: nn.Module, variables: dict, x: jnp.ndarray, cotangent: jnp.ndarray, input_grad: bool,
            tx: optax.GradientTransformation) -> dict[str, tuple[Callable[..., Any], tuple]]:
  """The three passes of `module` on `x`; backward starts from `cotangent` (the output's shape)."""
  params, rest = _split(variables)

  def forward(variables, x):
    return module.apply(variables, x, train=False)

  def forward_backward(params, rest, x, cotangent):
    if input_grad:
      _, vjp = jax.vjp(lambda p, x: _train_apply(module, p, rest, x), params, x)
      return vjp(cotangent)
    _, vjp = jax.vjp(lambda p: _train_apply(module, p, rest, x), params)
    return vjp(cotangent)

  def train_step(params, opt_state, rest, x, cotangent):
    grads = forward_backward(params, rest, x, cotangent)
    updates, opt_state = tx.update(grads[0], opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads[1:]

  return {"forward": (forward, (variables, x)),
          "forward_backward": (forward_backward, (params, rest, x, cotangent)),
          "train_step": (train_step, (params, tx.init(params), rest, x, cotangent))}


def variant_module(variant: dict, width: int, key: str) -> nn.Module:
  """The module of one variant: its `blocks` (`{"name": ..., **block fields}`) in order, each with `width`
  output channels unless it sets `features`. Activations are given by name."""
  specs = variant.get("blocks")
  if not specs:
    raise ConfigError(f"{key}.blocks", "a variant needs at least one block, e.g. blocks=({'name': 'conv'},)")
  modules = []
  for j, spec in enumerate(specs):
    spec, where = dict(spec), f"{key}.blocks[{j}]"
    name = spec.pop("name", None)
    cls = blocks.BLOCKS.lookup(name, f"{where}.name")
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(spec) - fields)
    if unknown:
      raise ConfigError(f"{where}.{unknown[0]}", f"block {cls.__name__} has no such field; it has: "
                        f"{', '.join(sorted(fields))}")
    for field in _ACTIVATION_FIELDS:
      if isinstance(spec.get(field), str):
        spec[field] = activations.get(spec[field], f"{where}.{field}")
    features = spec.pop("features", width)
    modules.append(blocks.make_block(name, features, key=f"{where}.name", **spec))
  return modules[0] if len(modules) == 1 else Stack(tuple(modules))


def _filled(tree: Any, rng: np.random.Generator) -> Any:
  """Arrays of the shapes in `tree`: matrices N(0, 1/fan_in), vectors ones (biases, BatchNorm statistics).

  The values do not change the cost. NumPy draws them because a `jax.random` kernel is compiled for
  every new shape, which takes 1-2 s each on a loaded CPU: longer than the rest of a small table.
  """

  def fill(leaf):
    if len(leaf.shape) < 2:
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = math.prod(leaf.shape[:-1])
    return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), leaf.dtype)

  return jax.tree.map(fill, tree)


def block_subject(label: str, module: nn.Module, input_shape: Sequence[int], tx: optax.GradientTransformation,
                  optimizer_flops_per_param: Callable[[int], int], seed: int = 0, key: str = "cost") -> Subject:
  """A block (or `Stack`) on `input_shape` `[batch, *spatial, c_in]` float32 inputs; gradients include the input's."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  try:
    found = flops.layers(module, x, input_grad=True)
  except shapes.ShapeError as e:
    raise ConfigError(f"{key}.{e.field}", f"{e} (input {'x'.join(map(str, input_shape))})") from None
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  y = jax.eval_shape(module.apply, abstract, x)
  rng = np.random.default_rng(seed)
  variables, x = _filled(abstract, rng), jnp.asarray(rng.standard_normal(x.shape), x.dtype)
  cotangent = jnp.asarray(rng.standard_normal(y.shape), y.dtype)
  params = flops.param_count(variables)
  return Subject(label, found, flops.totals(found, params, optimizer_flops_per_param(params)),
                 _passes(module, variables, x, cotangent, True, tx))


@dataclasses.dataclass
class ModelSetup:
  """A config's model, optimizer, initial state and one random batch of its dataset's shape."""

  model: nn.Module
  state: Any  # research.train.TrainState
  batch: dict
  input_shape: tuple[int, ...]
  num_classes: int


def model_setup(config: ml_collections.ConfigDict) -> ModelSetup:
  """Builds the config's model and optimizer at `config.data.batch_size`; the batch is random (no data read)."""
  from research import data, train  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  dataset = data.info(config)
  model = build_model(config.model, dataset.num_classes, dataset.shape)
  steps_per_epoch = max(1, data.steps_per_epoch(dataset.num_train, config.data.batch_size))
  tx, _ = build_optimizer(config, steps_per_epoch * config.train.num_epochs, steps_per_epoch)
  state = train.create_train_state(model, tx, config.seed, dataset.shape)
  rng = np.random.default_rng(config.seed)  # NumPy: see `_filled`.
  batch_shape = (config.data.batch_size, *dataset.shape)
  batch = {"image": jnp.asarray(rng.standard_normal(batch_shape), jnp.float32),
           "label": jnp.asarray(rng.integers(0, dataset.num_classes, batch_shape[:1]), jnp.int32)}
  return ModelSetup(model, state, batch, tuple(dataset.shape), dataset.num_classes)


def model_subject(config: ml_collections.ConfigDict, setup: ModelSetup) -> Subject:
  """The config's model (`setup = model_setup(config)`); the train step is `research.train.train_step` itself."""
  from research import train  # pylint: disable=g-import-not-at-top
  state, image = setup.state, setup.batch["image"]
  found = flops.layers(setup.model, image, input_grad=False, train=False)
  variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
  logits = jax.eval_shape(lambda v, x: setup.model.apply(v, x), variables, image)
  cotangent = jnp.asarray(np.random.default_rng(config.seed).standard_normal(logits.shape), logits.dtype)
  passes = _passes(setup.model, variables, image, cotangent, False, state.tx)
  passes["train_step"] = (train.train_step, (state, setup.batch))
  params = flops.param_count(variables)
  opt = flops.optimizer_flops(config.optimizer.name, params, config.optimizer.get("momentum"))
  return Subject(config.model.name, found, flops.totals(found, params, opt), passes)


def _optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable[[int], int]]:
  """The config's optimizer (sgd at 0.1 if it has none) and its FLOPs as a function of the parameter count."""
  if "optimizer" not in config:
    return optax.sgd(0.1), lambda n: flops.optimizer_flops("sgd", n)
  if "schedule" not in config:
    raise ConfigError("schedule", "is missing: the optimizer needs a learning-rate schedule, e.g. name='constant'")
  tx, _ = build_optimizer(config, 1, 1)
  name, momentum = config.optimizer.name, config.optimizer.get("momentum")
  return tx, lambda n: flops.optimizer_flops(name, n, momentum)


# ---------------------------------------------------------------------------------------------------
# Reports.


def _ratio(a, b) -> Optional[float]:
  return None if a is None or b is None or b == 0 else a / b


def _rows(subjects: Sequence[Subject], warmup: int, repeats: int, passes: Sequence[str]) -> list[dict]:
  """Measures `passes` of each subject: analytic FLOPs (naive and in-bounds), XLA's figures and the time.

  Every pass is compiled before any is timed; the subjects' calls of one pass are timed taking turns
  (`timing.measure_interleaved`), so that their time ratios share the machine's load.
  """
  rows, compiled = [], {}
  for i, subject in enumerate(subjects):
    totals = subject.totals
    analytic = {"forward": totals.forward_flops, "forward_backward": totals.forward_backward_flops,
                "train_step": totals.train_step_flops}
    in_bounds = {"forward": flops.in_bounds_flops(subject.layers, "forward"),
                 "forward_backward": flops.in_bounds_flops(subject.layers, "forward_backward")}
    in_bounds["train_step"] = in_bounds["forward_backward"] + totals.train_step_flops - totals.forward_backward_flops
    measured = {}
    for name in passes:
      fn, args = subject.passes[name]
      compiled[i, name], figures = compile_pass(fn, args)
      measured[name] = {"flops": analytic[name], "flops_in_bounds": in_bounds[name], **figures}
    rows.append({"label": subject.label, "params": totals.params, "macs": totals.macs, "totals": totals.to_dict(),
                 "layers": [l.to_dict() for l in subject.layers], "passes": measured})
  for name in passes:
    calls = {i: (compiled[i, name], subject.passes[name][1]) for i, subject in enumerate(subjects)}
    for i, seconds in timing.measure_interleaved(calls, warmup=warmup, repeats=repeats).items():
      rows[i]["passes"][name]["seconds"] = seconds.to_dict()
  return rows


def _add_ratios(rows: list[dict], default_reference: str, key: str) -> None:
  """Adds to each row its `reference` label and the ratio of every figure to that row's."""
  by_label = {r["label"]: r for r in rows}
  for row in rows:
    reference = row.get("reference") or default_reference
    if reference not in by_label:
      raise ConfigError(key, f"reference {reference!r} is not a variant label; labels: {', '.join(by_label)}")
    ref = by_label[reference]
    row["reference"] = reference
    row["ratio"] = {"params": _ratio(row["params"], ref["params"]), "macs": _ratio(row["macs"], ref["macs"])}
    for name, p in row["passes"].items():
      q = ref["passes"][name]
      p["ratio"] = {"flops": _ratio(p["flops"], q["flops"]), "xla_flops": _ratio(p["xla_flops"], q["xla_flops"]),
                    "xla_bytes": _ratio(p["xla_bytes"], q["xla_bytes"]),
                    "peak_bytes": _ratio(p["peak_bytes"], q["peak_bytes"]),
                    "seconds": _ratio(p["seconds"]["median"], q["seconds"]["median"])}


def _get(section: ml_collections.ConfigDict, name: str, key: str, check: Callable[[Any], bool], what: str):
  if name not in section:
    raise ConfigError(f"{key}.{name}", f"is missing; it must be {what}")
  value = section[name]
  if not check(value):
    raise ConfigError(f"{key}.{name}", f"must be {what}, got {value!r}")
  return value


def _positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_ints(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) > 0 and all(_positive_int(i) for i in v)


def _table(config: ml_collections.ConfigDict, name: str, warmup: int, repeats: int, passes: Sequence[str]) -> dict:
  """One comparison table of `config.cost.<name>`: every variant at every (resolution, c_in, width)."""
  key = f"cost.{name}"
  if name not in config.cost or not isinstance(config.cost[name], ml_collections.ConfigDict):
    raise ConfigError("cost.tables", f"names {name!r}, but there is no section {key}")
  section = config.cost[name]
  batch = _get(section, "batch_size", key, _positive_int, "a positive integer")
  resolutions = _get(section, "resolutions", key, _positive_ints, "a tuple of positive integers (pixels a side)")
  widths = _get(section, "widths", key, _positive_ints, "a tuple of positive integers (output channels)")
  in_channels = section.get("in_channels") or (None,)
  if in_channels != (None,) and not _positive_ints(in_channels):
    raise ConfigError(f"{key}.in_channels", f"must be None (= each width) or positive integers, got {in_channels!r}")
  variants = _get(section, "variants", key, lambda v: isinstance(v, (tuple, list)) and len(v) > 0,
                  "a tuple of variants, e.g. ({'label': '3x3', 'blocks': ({'name': 'conv'},)},)")
  reference = section.get("reference") or dict(variants[0]).get("label")
  tx, opt_flops = _optimizer(config)
  settings = []
  for resolution, c_in, width in itertools.product(resolutions, in_channels, widths):
    input_shape = (batch, resolution, resolution, c_in or width)
    subjects = []
    for i, variant in enumerate(variants):
      where = f"{key}.variants[{i}]"
      if not isinstance(variant.get("label"), str):
        raise ConfigError(f"{where}.label", "every variant needs a string label")
      module = variant_module(variant, width, where)
      subjects.append(block_subject(variant["label"], module, input_shape, tx, opt_flops, config.get("seed", 0),
                                    where))
    rows = _rows(subjects, warmup, repeats, passes)
    for row, variant in zip(rows, variants):
      row["blocks"] = [dict(b) for b in variant["blocks"]]
      if variant.get("reference"):
        row["reference"] = variant["reference"]
    _add_ratios(rows, reference, f"{key}.reference")
    settings.append({"batch_size": batch, "input_shape": list(input_shape[1:]), "width": width, "rows": rows})
  return {"name": name, "title": section.get("title") or name, "settings": settings}


def _environment() -> dict:
  device = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"jax": jax.__version__, "backend": jax.default_backend(), "device": device.device_kind,
          "device_count": jax.device_count(), "cpu_cores": cores}


def run(config: ml_collections.ConfigDict) -> dict:
  """The cost report (`COST_SCHEMA`) of `config`: its `cost` tables of block variants, or else its model.

  `config.cost` holds `tables` (the names of its table sections, in order), `warmup`, `repeats`, `passes`
  (those of `PASSES` to measure) and one section per table: `title`, `batch_size`, `resolutions`, `widths`,
  `in_channels` (None: equal to the width), `reference` (a variant label) and `variants`.
  """
  if "cost" in config:
    section = config.cost
    warmup = _get(section, "warmup", "cost", _positive_int, "a positive integer")
    repeats = _get(section, "repeats", "cost", lambda v: _positive_int(v) and v >= timing.MIN_REPEATS,
                   f"an integer >= {timing.MIN_REPEATS}")
    passes = tuple(section.get("passes") or PASSES)
    for name in passes:
      if name not in PASSES:
        raise ConfigError("cost.passes", f"unknown pass {name!r}; choose from: {', '.join(PASSES)}")
    names = _get(section, "tables", "cost", lambda v: isinstance(v, (tuple, list)) and len(v) > 0,
                 "a tuple of table section names")
    tables = [_table(config, name, warmup, repeats, passes) for name in names]
  elif "model" in config:
    warmup, repeats = MODEL_WARMUP, timing.MIN_REPEATS
    setup = model_setup(config)
    subject = model_subject(config, setup)
    [row] = _rows([subject], warmup, repeats, PASSES)
    _add_ratios([row], subject.label, "model.name")
    shape = list(setup.input_shape)
    tables = [{"name": "model", "title": f"model {config.model.name!r} of the experiment",
               "settings": [{"batch_size": config.data.batch_size, "input_shape": shape, "width": None,
                             "rows": [row]}]}]
  else:
    raise ConfigError("cost", "this config has neither a cost section nor a model to cost")
  return {"schema": "convlab.cost/1", "environment": _environment(), "warmup": warmup, "repeats": repeats,
          "tables": tables}


# ---------------------------------------------------------------------------------------------------
# Throughput.


@dataclasses.dataclass
class StepCall:
  """A config's jitted train step and its arguments, ready to time, with its analytic cost."""

  fn: Callable[..., Any]
  args: tuple
  params: int
  train_step_flops: int
  input_shape: tuple[int, ...]


def train_step_call(config: ml_collections.ConfigDict) -> StepCall:
  """`research.train.train_step` for the config's model and optimizer, jitted without donating the state
  (the harness reuses its arguments), on one random batch of the dataset's shape (no data loading)."""
  from research import train  # pylint: disable=g-import-not-at-top
  setup = model_setup(config)
  found = flops.layers(setup.model, setup.batch["image"], input_grad=False, train=False)
  params = flops.param_count({"params": setup.state.params})
  step_flops = flops.totals(found, params, flops.optimizer_flops(
      config.optimizer.name, params, config.optimizer.get("momentum"))).train_step_flops
  return StepCall(jax.jit(train.train_step), (setup.state, setup.batch), params, step_flops, setup.input_shape)


def bench(config: ml_collections.ConfigDict, warmup: int = 3, repeats: int = 10) -> dict:
  """Training-step throughput of the config's model and optimizer at its batch size (`BENCH_SCHEMA`)."""
  if warmup < 1 or repeats < timing.MIN_REPEATS:
    raise UserError(f"bench needs --warmup >= 1 and --repeats >= {timing.MIN_REPEATS}, got {warmup} and {repeats}")
  call = train_step_call(config)
  seconds = timing.measure(call.fn, *call.args, warmup=warmup, repeats=repeats)
  batch = config.data.batch_size
  return {"schema": "convlab.bench/1", "environment": _environment(), "model": config.model.name,
          "optimizer": config.optimizer.name, "batch_size": batch, "input_shape": list(call.input_shape),
          "params": call.params, "train_step_flops": call.train_step_flops, "seconds": seconds.to_dict(),
          "steps_per_second": 1.0 / seconds.median, "examples_per_second": batch / seconds.median,
          "flops_per_second": call.train_step_flops / seconds.median}


# ---------------------------------------------------------------------------------------------------
# Text.


def _si(value: Optional[float], unit: str = "") -> str:
  if value is None:
    return "-"
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.3g}{prefix}{unit}"
  return f"{value:.3g}{unit}"


def _x(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.3f}"


def _ms(seconds: float) -> str:
  ms = 1e3 * seconds
  return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _times(seconds: dict) -> str:
  return f"{_ms(seconds['median'])} [{_ms(seconds['min'])}-{_ms(seconds['max'])}]"


def _describe(layer: dict) -> str:
  window = "x".join(map(str, layer["window"])) or "dense"
  groups = f" g{layer['groups']}" if layer["groups"] > 1 else ""
  return f"{layer['path']} {window}{groups} {layer['input_shape'][-1]}->{layer['output_shape'][-1]}"


def format_report(report: dict) -> str:
  """The report as text: per table and setting, one line per (variant, pass), ratios to the reference last
  with time beside FLOPs; then each variant's layers with their share of the block's forward MACs."""
  env = report["environment"]
  lines = [f"cost on {env['device_count']} {env['backend']} device(s) ({env['device']}, {env['cpu_cores']} cores), "
           f"jax {env['jax']}; times: median [min-max] ms of {report['repeats']} calls after {report['warmup']} "
           "warm-up; FLOPs: analytic (research.flops), XLA: compiled cost_analysis(); ratios are to the 'vs' row."]
  header = (f"{'variant':<22}{'params':>8} {'pass':<11}{'FLOPs':>8}{'XLA FLOPs':>10}{'XLA bytes':>10}{'peak mem':>9}"
            f"  {'time ms':<22}{'vs':<10}{'params x':>9}{'FLOPs x':>8}{'time x':>8}{'XLA x':>7}{'bytes x':>8}")
  for table in report["tables"]:
    for setting in table["settings"]:
      shape = "x".join(map(str, setting["input_shape"]))
      width = "" if setting["width"] is None else f" -> {setting['width']} channels"
      lines += ["", f"== {table['title']}: batch {setting['batch_size']}, {shape}{width} ==", header]
      for row in setting["rows"]:
        for i, (name, p) in enumerate(row["passes"].items()):
          first = i == 0
          r = p["ratio"]
          lines.append(
              f"{row['label'] if first else '':<22}{_si(row['params']) if first else '':>8} {PASS_NAMES[name]:<11}"
              f"{_si(p['flops']):>8}{_si(p['xla_flops']):>10}{_si(p['xla_bytes'], 'B'):>10}"
              f"{_si(p['peak_bytes'], 'B'):>9}  {_times(p['seconds']):<22}{row['reference'] if first else '':<10}"
              f"{_x(row['ratio']['params']) if first else '':>9}{_x(r['flops']):>8}{_x(r['seconds']):>8}"
              f"{_x(r['xla_flops']):>7}{_x(r['xla_bytes']):>8}")
      lines.append("layers (forward MACs, share of the variant):")
      for row in setting["rows"]:
        parts = [f"{_describe(l)} {_si(l['macs'])} {l['macs'] / max(row['macs'], 1):.0%}" for l in row["layers"]]
        lines.append(f"  {row['label']}: {'; '.join(parts)}")
  return "\n".join(lines)


def format_bench(result: dict) -> str:
  s = result["seconds"]
  return (f"{result['model']} + {result['optimizer']}, batch {result['batch_size']} of "
          f"{'x'.join(map(str, result['input_shape']))}, {result['params']} params on "
          f"{result['environment']['backend']} (jax {result['environment']['jax']}): "
          f"{result['steps_per_second']:.1f} steps/s, {result['examples_per_second']:.0f} examples/s "
          f"(step median [min-max] {_times(s)} ms over {s['n']} after "
          f"{s['warmup']} warm-up; {_si(result['flops_per_second'], 'FLOP/s')} analytic)")


# ---------------------------------------------------------------------------------------------------
# JSON schemas (a subset of JSON Schema: type, properties, required, additionalProperties, items, enum,
# minimum), and the small validator the tests use.

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TIMING = {"type": "object", "required": ["min", "median", "max", "n", "warmup"],
           "properties": {"min": {"type": "number", "minimum": 0}, "median": {"type": "number", "minimum": 0},
                          "max": {"type": "number", "minimum": 0},
                          "n": {"type": "integer", "minimum": timing.MIN_REPEATS},
                          "warmup": {"type": "integer", "minimum": 1}},
           "additionalProperties": False}
_ENVIRONMENT = {"type": "object", "required": ["jax", "backend", "device", "device_count", "cpu_cores"],
                "properties": {"jax": {"type": "string"}, "backend": {"type": "string"},
                               "device": {"type": "string"}, "device_count": {"type": "integer", "minimum": 1},
                               "cpu_cores": {"type": ["integer", "null"]}}}
_LAYER = {"type": "object",
          "required": ["path", "kind", "input_shape", "output_shape", "window", "groups", "params", "macs",
                       "macs_in_bounds", "bias_adds", "input_grad", "forward_flops", "forward_backward_flops"],
          "properties": {"path": {"type": "string"}, "kind": {"enum": ["conv", "dense"]},
                         "input_shape": {"type": "array", "items": {"type": "integer"}},
                         "output_shape": {"type": "array", "items": {"type": "integer"}},
                         "window": {"type": "array", "items": {"type": "integer"}},
                         "groups": {"type": "integer", "minimum": 1}, "params": {"type": "integer", "minimum": 0},
                         "macs": {"type": "integer", "minimum": 0},
                         "macs_in_bounds": {"type": "integer", "minimum": 0},
                         "bias_adds": {"type": "integer", "minimum": 0}, "input_grad": {"type": "boolean"},
                         "forward_flops": {"type": "integer", "minimum": 0},
                         "forward_backward_flops": {"type": "integer", "minimum": 0}}}
_PASS = {"type": "object",
         "required": ["flops", "flops_in_bounds", "xla_flops", "xla_bytes", "peak_bytes", "seconds", "ratio"],
         "properties": {"flops": {"type": "integer", "minimum": 0},
                        "flops_in_bounds": {"type": "integer", "minimum": 0},
                        "xla_flops": _NUMBER_OR_NULL, "xla_bytes": _NUMBER_OR_NULL,
                        "peak_bytes": {"type": ["integer", "null"]}, "seconds": _TIMING,
                        "ratio": {"type": "object",
                                  "required": ["flops", "xla_flops", "xla_bytes", "peak_bytes", "seconds"],
                                  "additionalProperties": _NUMBER_OR_NULL}}}
_TOTALS = [f.name for f in dataclasses.fields(flops.Totals)]
_ROW = {"type": "object", "required": ["label", "reference", "params", "macs", "totals", "layers", "passes", "ratio"],
        "properties": {"label": {"type": "string"}, "reference": {"type": "string"},
                       "params": {"type": "integer", "minimum": 0}, "macs": {"type": "integer", "minimum": 0},
                       "blocks": {"type": "array", "items": {"type": "object"}},
                       "layers": {"type": "array", "items": _LAYER},
                       "totals": {"type": "object", "required": _TOTALS,
                                  "additionalProperties": {"type": "integer", "minimum": 0}},
                       "passes": {"type": "object", "additionalProperties": False,
                                  "properties": {name: _PASS for name in PASSES}},
                       "ratio": {"type": "object", "required": ["params", "macs"],
                                 "additionalProperties": _NUMBER_OR_NULL}}}
COST_SCHEMA = {
    "type": "object", "required": ["schema", "environment", "warmup", "repeats", "tables"],
    "properties": {
        "schema": {"enum": ["convlab.cost/1"]}, "environment": _ENVIRONMENT,
        "warmup": {"type": "integer", "minimum": 1}, "repeats": {"type": "integer", "minimum": timing.MIN_REPEATS},
        "tables": {"type": "array", "items": {
            "type": "object", "required": ["name", "title", "settings"],
            "properties": {"name": {"type": "string"}, "title": {"type": "string"},
                           "settings": {"type": "array", "items": {
                               "type": "object", "required": ["batch_size", "input_shape", "width", "rows"],
                               "properties": {"batch_size": {"type": "integer", "minimum": 1},
                                              "input_shape": {"type": "array", "items": {"type": "integer"}},
                                              "width": {"type": ["integer", "null"]},
                                              "rows": {"type": "array", "items": _ROW}}}}}}}}}
BENCH_SCHEMA = {
    "type": "object",
    "required": ["schema", "environment", "model", "optimizer", "batch_size", "input_shape", "params",
                 "train_step_flops", "seconds", "steps_per_second", "examples_per_second", "flops_per_second"],
    "properties": {"schema": {"enum": ["convlab.bench/1"]}, "environment": _ENVIRONMENT,
                   "model": {"type": "string"}, "optimizer": {"type": "string"},
                   "batch_size": {"type": "integer", "minimum": 1},
                   "input_shape": {"type": "array", "items": {"type": "integer"}},
                   "params": {"type": "integer", "minimum": 0}, "train_step_flops": {"type": "integer", "minimum": 0},
                   "seconds": _TIMING, "steps_per_second": {"type": "number", "minimum": 0},
                   "examples_per_second": {"type": "number", "minimum": 0},
                   "flops_per_second": {"type": "number", "minimum": 0}}}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _is(value: Any, kind: str) -> bool:
  if kind in ("integer", "number") and isinstance(value, bool):
    return False
  return isinstance(value, _TYPES[kind]) and not (kind == "number" and isinstance(value, float) and math.isnan(value))


def schema_errors(instance: Any, schema: dict, path: str = "$") -> list[str]:
  """Where `instance` (parsed JSON) breaks `schema`, as "path: problem" lines; empty if it conforms."""
  errors = []
  kinds = schema.get("type")
  if kinds is not None:
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not any(_is(instance, k) for k in kinds):
      return [f"{path}: expected {' or '.join(kinds)}, got {type(instance).__name__}"]
  if "enum" in schema and instance not in schema["enum"]:
    errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
  if "minimum" in schema and _is(instance, "number") and instance < schema["minimum"]:
    errors.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
  if isinstance(instance, dict):
    errors += [f"{path}: missing {k!r}" for k in schema.get("required", ()) if k not in instance]
    properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
    for k, v in instance.items():
      if k in properties:
        errors += schema_errors(v, properties[k], f"{path}.{k}")
      elif extra is False:
        errors.append(f"{path}: unexpected {k!r}")
      elif isinstance(extra, dict):
        errors += schema_errors(v, extra, f"{path}.{k}")
  if isinstance(instance, list) and "items" in schema:
    for i, item in enumerate(instance):
      errors += schema_errors(item, schema["items"], f"{path}[{i}]")
  return errors
