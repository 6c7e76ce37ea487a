"""Training: `train_and_evaluate(config, workdir)`, and `train_seeds` for several seeds at once.

The loop is `train_seeds`, read top to bottom: plan, workdirs, resume, data and the compiled steps,
then epochs of steps, each epoch ending in evaluation, the metrics and a save. Each service it
calls lives in its own module, whose docstring says what it promises and what the loop may not
reorder:

  training.plan        the config made into objects, once (`make_plan`)
  training.resume      where each seed starts: a valid checkpoint, or the initial state
  training.saving      the checkpoints under the `config.train` policy, and failed saves
  training.integrity   checksums and quarantine of saved steps
  training.stopping    SIGTERM and Ctrl-C, and the stop agreement of several processes
  training.epoch_log   the epoch's step metrics, and a non-finite loss (`NonFinite`)
  training.metrics     metrics.jsonl, TensorBoard and the epoch lines
  training.evaluate    the test split
  research.progress    the progress bar, or progress lines where there is no terminal
  training.hooks       the seams a benchmark or a test may use

Data-parallel over all devices: the batch is split along a `data` mesh axis and the state is
replicated; XLA inserts the gradient all-reduce. The same code runs on CPU, GPU and TPU, in one
process or several (`training.distributed` says which process writes what).

Crash safety: a run holds `<workdir>/run.lock`, saves asynchronously and resumes from the newest
valid checkpoint, mid-epoch included: killed at any point and rerun, it ends with the parameters of
an uninterrupted run, bit for bit. SIGTERM or Ctrl-C saves and stops (`Interrupted`); a non-finite
loss stops a seed without saving (`TrainingDiverged`).

Progress goes to the `research` loggers: a caller silences a run with
`logging.getLogger("research").setLevel(logging.WARNING)`.
"""

import contextlib
import logging
import time

import jax
import ml_collections

from research.data import batches, splits
from research.errors import Interrupted, TrainingDiverged
from research.progress import Progress
from research.training import checkpoint, distributed, lock, memory, stopping
from research.training import hooks as hooks_lib
from research.training.epoch_log import EpochLog
from research.training.evaluate import make_evaluator, with_grad_norms
from research.training.plan import make_plan
from research.training.seed_run import CONFIG_FILE, SeedRun
from research.training.state import parallel_steps, vmapped_steps

log = logging.getLogger(__name__)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  progress: Progress | None = None,
  hooks: hooks_lib.Hooks | None = None,
) -> dict:
  """Trains and evaluates per epoch, checkpointing into `workdir`; resumes if it holds a checkpoint.
  Returns the last metrics record (see `training.metrics`)."""
  return train_seeds(config, {config.seed: workdir}, progress, hooks)[config.seed]


def train_seeds(
  config: ml_collections.ConfigDict,
  workdirs: dict[int, str],
  progress: Progress | None = None,
  hooks: hooks_lib.Hooks | None = None,
) -> dict[int, dict]:
  """`train_and_evaluate` for several seeds of one config at once: seed `s` trains into
  `workdirs[s]` exactly as a run of its own would (its checkpoints, metrics and resume; the same
  numbers, bit for bit on CPU), but all their steps at one step number are one compiled call
  (`state.parallel_steps`). Returns each seed's last metrics record.

  Seeds whose checkpoints stand at different steps train in groups, one after another. A seed that
  diverges stops (nothing saved after its last good step) and the others go on; the run then ends
  with `TrainingDiverged` naming it. With `progress`, the caller's, the run advances it by the steps
  done (all seeds together) and draws none of its own. `hooks`: `training.hooks`.
  """
  hooks = hooks or hooks_lib.installed
  # Everything that can be wrong with the config is found before anything is written; process 0
  # prepares the dataset first, and the others then read it.
  plan = distributed.writer_first("convlab:plan", lambda: make_plan(config, seeds=len(workdirs)))
  spe, writer = plan.steps_per_epoch, distributed.is_writer()
  labels = {s: f"seed {s}: " if len(workdirs) > 1 else "" for s in workdirs}
  runs = [SeedRun(config, seed, workdir, labels[seed]) for seed, workdir in workdirs.items()]
  with contextlib.ExitStack() as held:
    for run in runs:
      run.prepare()
      if writer:  # Process 0 holds the lock for all (`training.distributed`).
        held.enter_context(lock.hold(run.workdir))
    stop = held.enter_context(stopping.signals())
    _describe(plan, len(runs))

    # Resume: each seed's newest valid checkpoint, or its initial state; its files follow it.
    for run in runs:
      run.start(plan, hooks)
      held.callback(run.close)

    # Data, the compiled steps and the evaluator.
    loading = time.perf_counter()
    train, test = splits.load(config)
    stats = splits.normalizer(train, plan.dataset.pixel_max)
    log.info(f"Read {len(train)} train and {len(test)} test examples into memory in "
             f"{time.perf_counter() - loading:.1f} s (once per run).")  # fmt: skip
    replicated, _ = plan.shardings()
    by_batch = plan.sharding(None, "data")  # An epoch's indices: each device's share of each batch.
    # The normalized split, once, on the devices: float32, 4 bytes a pixel.
    split = {"image": splits.normalize(train.images, stats), "label": train.labels}
    on_device = jax.device_put(split, replicated)
    steps_fn = hooks.steps or (
      vmapped_steps if plan.seeds_together == "vmap" and len(runs) > 1 else parallel_steps
    )
    train_fn = jax.jit(
      steps_fn,
      in_shardings=(replicated, replicated, by_batch),
      out_shardings=replicated,
      donate_argnums=0,
    )
    evaluate = make_evaluator(plan, test, stats)
    if config.train.log_grad_norms:
      evaluate = with_grad_norms(evaluate, plan, runs[0].state, on_device)
    if progress is None:
      total, done = plan.total_steps * len(runs), sum(r.step for r in runs)
      progress = Progress(total, done, interval=hooks.progress_seconds, enabled=writer)
      held.callback(progress.close)
    loop_started, compiled = time.perf_counter(), False

    # The epochs, for each group of seeds at the same step: from the checkpoint's epoch, skipping
    # the batches it had done.
    for start in sorted({run.step for run in runs}):
      group, step = [run for run in runs if run.step == start], start
      for epoch in range(start // spe, plan.num_epochs):
        if not (active := [r for r in group if r.diverged is None]):
          break
        started, skip = time.perf_counter(), step - epoch * spe
        for run in active:
          run.epoch_log = run.epoch_log if skip else EpochLog()
          order = batches.epoch_indices(
            run.seed, epoch, plan.dataset.num_train, steps_per_epoch=spe, batch_size=plan.batch_size
          )
          run.order = distributed.global_array(order, by_batch)  # Each process feeds its share.
        for _ in range(skip, spe):  # Each step takes the batch of its own step number.
          outputs = train_fn([r.state for r in active], on_device, [r.order for r in active])
          step += 1
          for run, (state, step_metrics) in zip(active, outputs):
            run.state, run.step = state, step
            run.guard(run.epoch_log.add, step, step_metrics)
          if hooks.on_step is not None:
            hooks.on_step(step, lambda: [r.saver.wait() for r in runs])
          progress.advance(len(active))
          active = [r for r in active if r.diverged is None]
          for run in active:
            run.saver.check(step)  # A save that failed in the background stops the run here.
            if step % spe and run.saver.due(step):  # The end of an epoch saves below.
              run.guard(run.save)
          if not (active := [r for r in active if r.diverged is None]):
            break
          if step % spe and stopping.should_stop(stop, step, spe):  # Every process, every step.
            _interrupt(active, stop, step)
        if not active:
          break

        # End of the epoch: the step metrics, evaluation, the metrics record and the save.
        for run in active:
          run.guard(run.epoch_log.flush)
        active = [r for r in active if r.diverged is None]
        train_seconds, blocked = time.perf_counter() - started, sum(r.saver.blocked for r in active)
        rate = (spe - skip) * plan.batch_size * len(active) / train_seconds
        for run in active:
          run.record = record = {
            "step": step,
            "epoch": epoch + 1,
            **run.epoch_log.means(),
            **evaluate(run.state),
            "learning_rate": float(plan.schedule(step - 1)),
          }
          timing = {
            "epoch_seconds": time.perf_counter() - started,
            "train_examples_per_second": rate,
          }
          run.writer.write(record, timing, compiling=not compiled)
          if run.saver.due(step):
            run.guard(run.save, record)
        compiled = True
        if hooks.on_epoch is not None:
          seconds = train_seconds + sum(r.saver.blocked for r in active) - blocked
          hooks.on_epoch((spe - skip) * len(active), seconds)
        if stopping.should_stop(stop, step, spe):
          _interrupt([r for r in active if r.diverged is None], stop, step)

  _finish(runs, time.perf_counter() - loop_started)
  diverged = [run for run in runs if run.diverged is not None]
  if len(runs) == 1 and diverged:
    raise diverged[0].diverged
  if diverged:
    raise TrainingDiverged(
      f"training diverged for seed(s) {', '.join(str(r.seed) for r in diverged)} (the "
      f"others finished): {'; '.join(str(r.diverged) for r in diverged)}"
    )
  return {run.seed: run.record for run in runs}


def _describe(plan, seeds: int) -> None:
  """The plan in two lines: data, steps and devices; the memory a step needs."""
  dataset, devices = plan.dataset, plan.devices
  log.info(
    f"{dataset.name}: {dataset.num_train} train / {dataset.num_test} test examples of shape "
    f"{dataset.shape}; batch {plan.batch_size} -> {plan.steps_per_epoch} steps per epoch, "
    f"{plan.num_epochs} epochs -> {plan.total_steps} steps on {len(devices)} "
    f"{devices[0].platform} device(s)"
    + (f"; {seeds} seeds, their steps in one call ({plan.seeds_together})." if seeds > 1 else ".")
  )
  have, where = memory.available(devices)
  log.info(
    f"Memory per device, estimated from shapes: {plan.need.describe()}"
    + (" per seed" if seeds > 1 else "")
    + (f"; {memory.size(have)} of {where}." if have is not None else f"; {where}.")
  )


def _interrupt(active: list[SeedRun], stop: stopping.StopRequest, step: int) -> None:
  """Saves every active seed where it is (unless saved already) and stops the run."""
  for run in active:
    run.guard(run.save_unless_saved)
  where = ", ".join(checkpoint.directory(r.workdir) for r in active if r.diverged is None)
  raise Interrupted(
    f"stopped by {stopping.reason(stop)} at step {step} after saving it in {where}; rerun the "
    "same command to resume"
  )


def _finish(runs: list[SeedRun], elapsed: float) -> None:
  """What checkpointing cost, and each finished seed's last line."""
  saves, blocked = sum(r.saver.saves for r in runs), sum(r.saver.blocked for r in runs)
  if saves:
    log.info(
      f"Checkpointing: {saves} save{'s' if saves != 1 else ''} blocked training for "
      f"{blocked:.2f} s of {elapsed:.2f} s ({100 * blocked / max(elapsed, 1e-9):.1f}%)."
    )
  for run in runs:
    if run.diverged is None:
      log.info(
        f"{run.label}Done: test_accuracy "
        f"{100 * run.record.get('test_accuracy', float('nan')):.2f}% after "
        f"{run.record.get('epoch', 0)} epochs. Results in {run.workdir} "
        f"(metrics.jsonl, tensorboard/, checkpoints/, {CONFIG_FILE})."
      )
