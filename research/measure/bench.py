"""`run.py bench`: the speed of a config's training, against which everything else is compared.

In one process, with the one timing harness (`measure.timing`):
- `step`: the jitted train step (`training.state.train_step`) on one random batch of the dataset's
  shape: no data loading, the step alone;
- `eval`: the jitted eval step on one random batch of `data.eval_batch_size`;
- `layers` (with `layers=True`): each counted layer alone, its forward, input gradient and weight
  gradient (`measure.layers`);
- `twin` (where torch is installed: `pip install -e ".[peer]"`): the same model and optimizer in
  PyTorch eager (`measure.twin_step`), its step timed taking turns with the JAX step; `jax_ratio`
  is JAX's examples/s over PyTorch's;
- `seeds` (with `seeds` > 1): that many seeds' steps in one compiled call, as `run.py train
  --seeds` runs them, both ways (`training.state.parallel_steps`, unrolled, and `vmapped_steps`),
  against one call per seed, taking turns, and which one `train.seeds_together=auto` picks here;
- `compile`: the step's compilation, cold and warm (from the persistent compilation cache);
- `peak`: a float32 matmul (`PEAK_SIZE` square), the machine's attainable FLOP/s, so that the step's
  GFLOP/s reads as a share of it;
- `loop` (with `loop=True`): a real training run, the config's own if it has at most
  `loop_max_steps` steps, else its first few epochs (`training.train.train_and_evaluate`, the
  same code as `run.py train`, into a temporary workdir, with the config's data, checkpoint policy
  and progress reporting; its `on_epoch` hook says what each epoch took): its examples/s over the
  epochs after the first (which compiles), against the bare step's. That ratio is the loop's
  efficiency: what data, metrics, the progress bar and checkpoints cost. It is measured
  `loop_rounds` times and the median round reported (the machine's load can drift by more than the
  loop's cost between two runs). It needs the dataset; where it is not prepared and cannot be
  prepared offline, the loop is skipped and the report says why.

The result is a `measure.reports.BenchReport`, returned as `dataclasses.asdict` of it.
"""

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from research.errors import DataError, UserError
from research.measure import reports, subjects, timing, twin_model, twin_step
from research.measure.environment import environment
from research.measure.layers import layer_times

PEAK_SIZE = 1024  # The matmul that measures the attainable FLOP/s: [n, n] @ [n, n], float32.
# The loop's defaults (`bench`'s `loop_*`): a run up to LOOP_MAX_STEPS long is timed whole (its
# checkpoint policy as it is), a longer one for at least LOOP_STEPS steps after its first epoch,
# LOOP_ROUNDS times, each against the bare step timed just before and after it.
LOOP_MAX_STEPS = 1000
LOOP_STEPS = 200
LOOP_ROUNDS = 3


def bench(
  config: ml_collections.ConfigDict,
  warmup: int = 3,
  repeats: int = 10,
  loop: bool = False,
  layers: bool = False,
  seeds: int = 1,
  loop_steps: int = LOOP_STEPS,
  loop_max_steps: int = LOOP_MAX_STEPS,
  loop_rounds: int = LOOP_ROUNDS,
) -> dict:
  """Training-step, eval and matmul throughput of the config's model and optimizer at its batch
  sizes; with `layers` each layer's passes timed alone (`measure.layers`), with `seeds` > 1 that
  many seeds' steps together, with `loop` the training loop's efficiency (`loop_*`: see the module
  docstring). Returns `dataclasses.asdict` of a `reports.BenchReport`. The step is jitted without
  donating the state, because the harness reuses its arguments."""
  if warmup < 1 or repeats < timing.MIN_REPEATS:
    raise UserError(
      f"bench needs --warmup >= 1 and --repeats >= {timing.MIN_REPEATS}, got {warmup} and {repeats}"
    )
  if seeds < 1:
    raise UserError(f"bench needs --seeds >= 1, got {seeds}")
  subject = subjects.model_subject(config)
  plan = subject.plan
  step, args = subject.passes["train_step"]
  a = jnp.asarray(np.random.default_rng(0).standard_normal((PEAK_SIZE, PEAK_SIZE)), jnp.float32)
  step_fn = jax.jit(step)  # One compilation for every use of the bare step below.
  calls = {
    "step": (step_fn, args),
    "eval": _eval_pass(plan, args[0], config.seed),
    "peak": (jax.jit(jnp.dot), (a, a)),
  }
  if seeds > 1:  # As `run.py train --seeds` steps them: one call for all, against one call each.
    states = [args[0]] * seeds
    calls["together"] = (jax.jit(lambda states, b: [step(s, b) for s in states]), (states, args[1]))
    calls["apart"] = (lambda states, b: [step_fn(s, b) for s in states], (states, args[1]))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    calls["vmap"] = (jax.jit(jax.vmap(step, in_axes=(0, None))), (stacked, args[1]))
  twin = _twin(config)
  if isinstance(twin, tuple):
    calls["twin"] = (twin[0], ())
  times = timing.measure_interleaved(calls, warmup=warmup, repeats=repeats)
  seconds, batch, evals = times["step"], plan.batch_size, plan.eval_batch_size
  step_flops = subject.totals.train_step_flops
  peak = 2 * PEAK_SIZE**3 / times["peak"].median
  if isinstance(twin, tuple):
    t = times["twin"]
    twin = reports.TwinSpeed(
      **twin[1],
      seconds=t,
      examples_per_second=batch / t.median,
      jax_ratio=t.median / seconds.median,
    )
  report = reports.BenchReport(
    environment=environment(),
    model=config.model.name,
    optimizer=config.optimizer.name,
    batch_size=batch,
    input_shape=list(plan.dataset.shape),
    params=subject.totals.params,
    train_step_flops=step_flops,
    seconds=seconds,
    steps_per_second=1.0 / seconds.median,
    examples_per_second=batch / seconds.median,
    flops_per_second=step_flops / seconds.median,
    eval=reports.EvalSpeed(
      batch_size=evals, seconds=times["eval"], examples_per_second=evals / times["eval"].median
    ),
    peak=reports.PeakSpeed(
      matmul=PEAK_SIZE,
      seconds=times["peak"],
      flops_per_second=peak,
      step_share=step_flops / seconds.median / peak,
    ),
    twin=twin,
    seeds=_seeds(times, seeds, plan.devices[0].platform) if seeds > 1 else None,
    compile=_compile_times(step, args),
    layers=layer_times(plan.model, args[1]["image"].shape, warmup, repeats, train=False)
    if layers
    else None,
    loop=_loop(config, step_fn, args, warmup, repeats, loop_steps, loop_max_steps, loop_rounds)
    if loop
    else None,
  )
  return dataclasses.asdict(report)


def _twin(
  config: ml_collections.ConfigDict,
) -> tuple[Callable[[], None], dict] | reports.Skipped | None:
  """The PyTorch twin's step to time beside the JAX one, and `{"torch_version", "threads"}`
  (`twin_step.twin_pass`); `reports.Skipped` for a model it does not reproduce; None without
  torch."""
  if not twin_model.available():
    return None
  try:
    return twin_step.twin_pass(config)
  except twin_model.Unsupported as e:
    return reports.Skipped(skipped=str(e))


def _seeds(times: dict[str, timing.Timing], seeds: int, platform: str) -> reports.SeedsSpeed:
  """The seeds' calls of `times` (`together`, `vmap`, `apart`) and their ratios to `apart`."""
  from research.training import state as state_lib

  apart = times["apart"].median
  return reports.SeedsSpeed(
    seeds=seeds,
    together=times["together"],
    apart=times["apart"],
    ratio=times["together"].median / apart,
    vmap=times["vmap"],
    vmap_ratio=times["vmap"].median / apart,
    auto=state_lib.seeds_formulation("auto", platform),
  )


def _compile_times(step, args) -> reports.CompileTimes:
  """Seconds to compile the jitted step cold (an empty persistent compilation cache, in a temporary
  directory) and warm (the same program again, after `jax.clear_caches()`: loaded from that
  cache, as a second `run.py` process would). The process's own cache settings are restored."""
  options = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  saved = {name: jax.config.values[name] for name in options}
  seconds = {}
  try:
    with tempfile.TemporaryDirectory(prefix="convlab-compile-") as directory:
      compilation_cache.reset_cache()
      jax.config.update(options[0], directory)
      jax.config.update(options[1], 0.0)
      jax.config.update(options[2], 0)
      for kind in ("cold", "warm"):
        jax.clear_caches()
        started = time.perf_counter()
        jax.jit(step).lower(*args).compile()
        seconds[kind] = time.perf_counter() - started
  finally:
    compilation_cache.reset_cache()
    for name, value in saved.items():
      jax.config.update(name, value)
  return reports.CompileTimes(**seconds, warm_share=seconds["warm"] / seconds["cold"])


def _eval_pass(plan, state, seed: int) -> tuple[Callable, tuple]:
  """(eval_step, (state, batch)): one random batch of the plan's eval batch size, all real."""
  from research.training.state import eval_step  # Orbax and TFDS: only when benchmarking.

  rng = np.random.default_rng(seed)
  n = plan.eval_batch_size
  batch = {
    "image": jnp.asarray(rng.standard_normal((n, *plan.dataset.shape)), jnp.float32),
    "label": jnp.zeros((n,), jnp.int32),
    "mask": jnp.ones((n,), jnp.float32),
  }
  return eval_step, (state, batch)


def _loop(
  config: ml_collections.ConfigDict,
  step: Callable,
  args: tuple,
  warmup: int,
  repeats: int,
  min_steps: int,
  max_steps: int,
  rounds: int,
) -> reports.LoopSpeed | reports.Skipped:
  """The training loop's examples/s over the epochs after the first of a short real run (the
  config's whole run if it has at most `max_steps` steps, else enough epochs for `min_steps` after
  the first), and its efficiency against the bare step's examples/s, in `rounds` rounds: the step
  `step(*args)` is timed alone before the first run, between runs and after the last, and each run
  is compared with the mean of the step's timings just before and just after it, so that load that
  comes or goes falls on both. The median round is reported, with every round's figures; or why
  the loop was skipped."""
  from research.training import plan as plan_lib
  from research.training import train
  from research.training.hooks import Hooks

  try:
    plan = plan_lib.make_plan(config)  # Prepares the dataset where that needs no network.
  except DataError as e:
    return reports.Skipped(skipped=str(e))
  config = ml_collections.ConfigDict(config.to_dict())
  if plan.total_steps > max_steps:  # Long runs: a few epochs (the first one compiles).
    config.train.num_epochs = 1 + max(1, math.ceil(min_steps / plan.steps_per_epoch))
  batch = plan.batch_size
  logger = logging.getLogger("research")
  level = logger.level
  found = []
  before = timing.measure(step, *args, warmup=warmup, repeats=repeats)
  for _ in range(rounds):
    epochs: list[tuple[int, float]] = []  # (steps, seconds) of each epoch, from `on_epoch`.
    hooks = Hooks(on_epoch=lambda steps, seconds, epochs=epochs: epochs.append((steps, seconds)))
    logger.setLevel(logging.WARNING)  # The run's own progress lines would bury the report.
    try:
      with tempfile.TemporaryDirectory(prefix="convlab-bench-") as workdir:
        train.train_and_evaluate(config, workdir, hooks=hooks)
    finally:
      logger.setLevel(level)
    after = timing.measure(step, *args, warmup=warmup, repeats=repeats)
    timed = epochs[1:]  # The first epoch compiles.
    steps = sum(n for n, _ in timed)
    seconds = sum(s for _, s in timed)
    reference = batch * (1 / before.median + 1 / after.median) / 2
    found.append(
      reports.LoopRound(
        seconds=seconds,
        examples_per_second=steps * batch / seconds,
        step_examples_per_second=reference,
        efficiency=steps * batch / seconds / reference,
      )
    )
    before = after
  middle = sorted(found, key=lambda r: r.efficiency)[(len(found) - 1) // 2]
  efficiencies = [r.efficiency for r in found]
  return reports.LoopSpeed(
    **dataclasses.asdict(middle),
    epochs=len(timed),
    steps=steps,
    efficiency_min=min(efficiencies),
    efficiency_max=max(efficiencies),
    rounds=found,
  )
