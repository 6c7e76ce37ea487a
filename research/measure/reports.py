"""The reports of `run.py cost` and `run.py bench` as dataclasses: the one definition of their
structure. `cost.run` builds a `CostReport` and `bench.bench` a `BenchReport`; both return it as
`dataclasses.asdict(...)`, which `--json` prints and `measure.text` renders.

Units: FLOPs and bytes per call (the whole batch), seconds per call as a `timing.Timing` (min,
median, max over `n` timed calls after `warmup` untimed ones), rates per second, shapes without
the batch unless named otherwise. `None` is a figure the backend does not report (`xla_*`,
`peak_bytes`, a ratio to one of them) or a part of a bench not measured (`twin` without torch,
`seeds` with one seed, `layers` and `loop` when not asked for); `Skipped` says why a part that was
asked for could not be measured.
"""

import dataclasses

from research.measure.environment import Environment
from research.measure.flops import Layer, Totals
from research.measure.timing import Timing

COST_SCHEMA = "convlab.cost/1"
BENCH_SCHEMA = "convlab.bench/2"

report = dataclasses.dataclass(frozen=True, kw_only=True)  # Every report class: built by keyword.


@report
class Skipped:
  """A part of a report that could not be measured, and why."""

  skipped: str


# `run.py cost`.


@report
class PassRatio:
  """A pass's figures over the reference row's: None where either is unknown."""

  flops: float | None
  xla_flops: float | None
  xla_bytes: float | None
  peak_bytes: float | None
  seconds: float | None  # Of the medians.


@report
class PassCost:
  """One pass (`cost.PASSES`) of one subject: analytic FLOPs (every tap, and only the taps inside
  the input), XLA's FLOPs and bytes accessed, the compiled peak memory, the time."""

  flops: int
  flops_in_bounds: int
  xla_flops: float | None
  xla_bytes: float | None
  peak_bytes: int | None
  seconds: Timing
  ratio: PassRatio


@report
class RowRatio:
  """A row's parameters and forward MACs over the reference row's."""

  params: float | None
  macs: float | None


@report
class CostRow:
  """One subject (a block variant, or a config's model) at one input shape. `blocks` are the
  variant's blocks as its config gives them (None for a model); `reference` the label of the row
  its ratios are to."""

  label: str
  reference: str
  blocks: list[dict] | None
  params: int
  macs: int
  totals: Totals
  ratio: RowRatio
  layers: list[Layer]
  passes: dict[str, PassCost]


@report
class CostSetting:
  """The rows of one (batch, input shape, width) of a table; `width` None for a model."""

  batch_size: int
  input_shape: list[int]
  width: int | None
  rows: list[CostRow]


@report
class CostTable:
  name: str
  title: str
  settings: list[CostSetting]


@report
class CostReport:
  schema: str = COST_SCHEMA
  environment: Environment
  warmup: int
  repeats: int
  tables: list[CostTable]


# `run.py bench`.


@report
class EvalSpeed:
  """The jitted eval step on one batch of `batch_size`."""

  batch_size: int
  seconds: Timing
  examples_per_second: float


@report
class PeakSpeed:
  """A float32 `[matmul, matmul] @ [matmul, matmul]`: the machine's attainable FLOP/s, and the
  train step's analytic FLOP/s as a share of it."""

  matmul: int
  seconds: Timing
  flops_per_second: float
  step_share: float


@report
class TwinSpeed:
  """The PyTorch twin's step (`measure.twin_step`), timed taking turns with the JAX step;
  `jax_ratio` is the twin's median time over JAX's (JAX's speed over torch's)."""

  torch_version: str
  threads: int
  seconds: Timing
  examples_per_second: float
  jax_ratio: float


@report
class SeedsSpeed:
  """`seeds` seeds' steps in one call, unrolled (`together`) and vmapped (`vmap`), against one call
  per seed (`apart`); the ratios are of medians, to `apart`. `auto` is what
  `train.seeds_together=auto` picks on this platform (`unrolled` or `vmap`)."""

  seeds: int
  together: Timing
  apart: Timing
  ratio: float
  vmap: Timing
  vmap_ratio: float
  auto: str


@report
class CompileTimes:
  """Seconds to compile the step with an empty persistent compilation cache (`cold`) and from it
  (`warm`), and warm over cold."""

  cold: float
  warm: float
  warm_share: float


@report
class LayerPassTimes:
  forward: Timing
  input_grad: Timing
  weight_grad: Timing


@report
class LayerTimes:
  """One counted layer of the model timed alone (`measure.layers`); shapes with the batch."""

  path: str
  kind: str
  window: list[int]
  input_shape: list[int]
  output_shape: list[int]
  forward_flops: int
  seconds: LayerPassTimes


@report
class LoopRound:
  """One real training run: its `seconds` over the epochs after the first, its examples/s, the
  bare step's examples/s timed just before and after it, and the ratio of the two."""

  seconds: float
  examples_per_second: float
  step_examples_per_second: float
  efficiency: float


@report
class LoopSpeed(LoopRound):
  """The median round's figures (by efficiency), the range of the efficiency, and every round.
  `epochs` and `steps` are those timed in each round (after the first epoch)."""

  epochs: int
  steps: int
  efficiency_min: float
  efficiency_max: float
  rounds: list[LoopRound]


@report
class BenchReport:
  """The train step on one random batch of `batch_size` of `input_shape`: its time and rates
  (`train_step_flops` analytic), then each further part (see `measure.bench`)."""

  schema: str = BENCH_SCHEMA
  environment: Environment
  model: str
  optimizer: str
  batch_size: int
  input_shape: list[int]
  params: int
  train_step_flops: int
  seconds: Timing
  steps_per_second: float
  examples_per_second: float
  flops_per_second: float
  eval: EvalSpeed
  peak: PeakSpeed
  twin: TwinSpeed | Skipped | None
  seeds: SeedsSpeed | None
  compile: CompileTimes
  layers: list[LayerTimes] | None
  loop: LoopSpeed | Skipped | None
