"""convlab's one entry point: `python run.py COMMAND [options]`. Without a command it trains:
`python run.py` trains the default experiment, `python run.py --config.train.num_epochs=2` the same
for 2 epochs."""

import argparse
import contextlib
import json
import logging
import os
import sys

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments")
DEFAULT_WORKDIR = os.path.join("workdirs", "default")


class _Console(logging.Handler):
  """The library's messages as plain lines: progress to stdout, warnings to stderr (the streams of
  the moment, so that a caller's redirection applies), kept clear of the progress bar
  (`tqdm.write`)."""

  def emit(self, record: logging.LogRecord) -> None:
    import tqdm

    stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
    tqdm.tqdm.write(self.format(record), file=stream)
    stream.flush()


@contextlib.contextmanager
def _console():
  """Shows the `research` loggers' messages from INFO up inside the `with`, then restores them."""
  logger = logging.getLogger("research")
  handler, saved = _Console(), (logger.level, logger.propagate)
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def _config(args, overrides):
  """The experiment at `--config` with the `--config.KEY=VALUE` overrides applied."""
  from research import config as config_lib

  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  return config


def _train(args, overrides):
  from research.errors import UserError
  from research.training import distributed, train

  config = _config(args, overrides)
  if distributed.initialize(config) and not distributed.is_writer():
    logging.getLogger("research").setLevel(logging.WARNING)  # Process 0 speaks for the run.
  if args.seeds is None:
    train.train_and_evaluate(config, args.workdir)
    return
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    seeds = []
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(
      f"--seeds takes distinct non-negative integers separated by commas, e.g. --seeds=0,1,2; "
      f"got {args.seeds!r}"
    )
  train.train_seeds(config, {s: os.path.join(args.workdir, f"seed_{s}") for s in seeds})


def _data(args, overrides):
  from research.data import catalog, prepare
  from research.errors import UserError

  config = _config(args, overrides)
  if args.action == "list":
    print(catalog.describe(catalog.catalog(config)))
    return
  if not args.name:
    raise UserError(
      "data prepare needs a dataset name, e.g. python run.py data prepare fashion_mnist"
    )
  config.data.name = args.name
  print(f"{args.name}: prepared in {prepare.prepare(config).data_dir}")


def _eval(args, overrides):
  del overrides
  from research.training import evaluate

  print(evaluate.describe(evaluate.evaluate_checkpoint(args.workdir, args.step), args.workdir))


def _filters(args, overrides):
  del overrides
  from research.notebooks import filters

  print(f"wrote {filters.write_filter_grid(args.out, args.image)}")


def _cost(args, overrides):
  from research.measure import cost, text

  report = cost.run(_config(args, overrides))
  print(json.dumps(report, indent=1) if args.json else text.format_report(report))


def _bench(args, overrides):
  from research.measure import bench, text

  config = _config(args, overrides)
  result = bench.bench(
    config,
    warmup=args.warmup,
    repeats=args.repeats,
    loop=args.loop,
    layers=args.layers,
    seeds=args.seeds,
  )
  print(json.dumps(result, indent=1) if args.json else text.format_bench(result))


def _ablate(args, overrides):
  from research.ablate import report, study

  results, written = study.run(_config(args, overrides), args.out)
  print(report.describe(results, args.out, written))


def _report(args, overrides):
  from research.ablate import report, study

  results, written = study.rerender(args.workdir)
  print(report.describe(results, args.workdir, written))


def _command(commands, name: str, run, summary: str, description: str, config: str | None = None):
  """A subcommand running `run(args, overrides)`. With `config` (a file under experiments/), it
  reads an experiment file (`--config`) and takes `--config.KEY=VALUE` overrides."""
  command = commands.add_parser(name, help=summary, description=description)
  command.set_defaults(run=run, takes_overrides=config is not None)
  command.add_argument(
    "--compile_cache",
    default=None,
    metavar="DIR",
    help="JAX's persistent compilation cache: a directory, or off (default: "
    "$CONVLAB_COMPILE_CACHE, else $XDG_CACHE_HOME/convlab/jax, i.e. ~/.cache/convlab/jax; "
    "a $JAX_COMPILATION_CACHE_DIR of yours wins)",
  )
  if config is not None:
    command.add_argument(
      "--config",
      default=os.path.join(EXPERIMENTS, config),
      help=f"experiment file (default: experiments/{config})",
    )
  return command


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="run.py",
    description="convlab: what convolutional building blocks cost and what they buy.",
    epilog="With no command, runs train: `run.py` trains experiments/default.py into "
    "workdirs/default, and `run.py --config.train.num_epochs=2` or `run.py --workdir=D` pass their "
    "options to train. Compiled "
    "programs are kept in JAX's persistent compilation cache (--compile_cache=DIR|off, on every "
    "command; default ~/.cache/convlab/jax).",
  )
  commands = p.add_subparsers(dest="command", metavar="COMMAND")
  train = _command(
    commands, "train", _train, "train and evaluate an experiment, resuming from its workdir",
    "Train an experiment; config keys are overridden with --config.KEY=VALUE "
    "(e.g. --config.model.widths='(16,32)').", config="default.py",
  )  # fmt: skip
  train.add_argument(
    "--workdir",
    default=DEFAULT_WORKDIR,
    help="where checkpoints and metrics go (default: %(default)s)",
  )
  train.add_argument(
    "--seeds",
    default=None,
    metavar="S,S,...",
    help="train these seeds together (their steps in one compiled call), seed S into "
    "WORKDIR/seed_S; each gives the numbers of its own run",
  )
  evaluate = _command(
    commands, "eval", _eval, "evaluate a saved checkpoint on the test split",
    "Print the test loss and accuracy of a checkpoint in a workdir, rebuilt from the config "
    "saved with it.",
  )  # fmt: skip
  evaluate.add_argument(
    "--workdir", default=DEFAULT_WORKDIR, help="the run's workdir (default: %(default)s)"
  )
  evaluate.add_argument(
    "--step", type=int, default=None, help="checkpoint step (default: the newest valid one)"
  )
  filters = _command(
    commands, "filters", _filters, "write a labelled grid of classic filters applied to a photo",
    "Box and Gaussian blur, sharpen, Sobel x/y/magnitude and laplacian, applied per channel "
    "with research.nn.conv.",
  )  # fmt: skip
  filters.add_argument(
    "--image", default=None, help="image to filter (default: scikit-learn's china.jpg)"
  )
  filters.add_argument("--out", default="filters.png", help="PNG to write (default: %(default)s)")
  cost = _command(
    commands, "cost", _cost,
    "parameters, analytic and XLA FLOPs, memory and time of blocks or a model",
    "Cost tables of an experiment's block variants (config.cost), or of its model: every "
    "figure beside its ratio to the reference variant.", config="cost_blocks.py",
  )  # fmt: skip
  bench = _command(
    commands, "bench", _bench, "train-step throughput of an experiment's model and optimizer",
    "Steps/s and examples/s of the jitted train step on random data of the dataset's shape "
    "(median over repeats, after warm-up).", config="default.py",
  )  # fmt: skip
  for command, schema in ((cost, "COST_SCHEMA"), (bench, "BENCH_SCHEMA")):
    command.add_argument(
      "--json", action="store_true", help=f"print as JSON (research.measure.schemas.{schema})"
    )
  bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
  bench.add_argument(
    "--repeats", type=int, default=10, help="timed steps, at least 5 (default: 10)"
  )
  bench.add_argument(
    "--loop",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time a short real training run against the bare step (default: on; needs the "
    "dataset)",
  )
  bench.add_argument(
    "--layers",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time each layer alone: forward, input gradient, weight gradient (default: on)",
  )
  bench.add_argument(
    "--seeds",
    type=int,
    default=1,
    help="also time N seeds' steps in one call (as train --seeds) against one call each "
    "(default: 1, not measured)",
  )
  data = _command(
    commands, "data", _data, "list the datasets and where they are prepared; prepare one",
    "Without arguments, lists the datasets this project knows (embedded, from IDX files, any "
    "TFDS name): prepared or not, where, split sizes and example shape. `data prepare NAME` "
    "prepares one into the TFDS data dir (--config.data.data_dir, --config.data.source_dir).",
    config="default.py",
  )  # fmt: skip
  data.add_argument("action", nargs="?", choices=("list", "prepare"), default="list")
  data.add_argument("name", nargs="?", default=None, help="the dataset to prepare")
  ablate = _command(
    commands, "ablate", _ablate,
    "train variants over seeds; tables and plots of accuracy and cost",
    "Run the ablation tables of an ablation config (each variant over several seeds, "
    "resumable), with 95% intervals and paired differences, and write results.md, results.csv, "
    "results.json and plots.", config="ablations.py",
  )  # fmt: skip
  ablate.add_argument(
    "--out",
    default=os.path.join("workdirs", "ablations"),
    help="where results and runs go (default: %(default)s)",
  )
  report = _command(
    commands, "report", _report,
    "render an ablation's tables and plots again from its saved runs, training nothing",
    "Read an ablation's results.json and its runs (--workdir, the ablation's --out) and write "
    "results.md, results.csv, results.json and the plots again.",
  )  # fmt: skip
  report.add_argument(
    "--workdir",
    default=os.path.join("workdirs", "ablations"),
    help="the ablation's --out folder (default: %(default)s)",
  )
  return p


def main(argv: list[str]) -> int:
  overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
    rest = ["train", *rest]  # No command: the options are train's.
  args = parser().parse_args(rest)
  if overrides and not getattr(args, "takes_overrides", False):
    print(f"error: {args.command} takes no --config.KEY overrides", file=sys.stderr)
    return 2
  from absl import logging as absl_logging

  from research import compilation
  from research.errors import EXIT_ABORTED, UserError

  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS and Orbax warn about normal events.
  try:
    with _console():
      compilation.enable_cache(args.compile_cache)  # Before anything is compiled.
      args.run(args, overrides)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:  # A second Ctrl-C in training, or one outside it.
    print("error: aborted by Ctrl-C; nothing was saved since the last checkpoint", file=sys.stderr)
    return EXIT_ABORTED
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
