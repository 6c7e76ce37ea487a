"""convlab's one entry point: `python run.py COMMAND [options]`; `python run.py` trains the default experiment."""

import argparse
import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "default.py")
DEFAULT_WORKDIR = os.path.join("workdirs", "default")
COST_CONFIG = os.path.join(os.path.dirname(DEFAULT_CONFIG), "cost_blocks.py")


def _config(args, overrides):
  """The experiment at `--config` with the `--config.KEY=VALUE` overrides applied."""
  from research import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  return config


def _train(args, overrides):
  from research import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(_config(args, overrides), args.workdir)


def _eval(args, overrides):
  del overrides
  from research import evaluate  # pylint: disable=g-import-not-at-top
  print(evaluate.describe(evaluate.evaluate_checkpoint(args.workdir, args.step), args.workdir))


def _filters(args, overrides):
  del overrides
  from research import filters  # pylint: disable=g-import-not-at-top
  print(f"wrote {filters.write_filter_grid(args.out, args.image)}")


def _cost(args, overrides):
  import json  # pylint: disable=g-import-not-at-top
  from research import cost  # pylint: disable=g-import-not-at-top
  report = cost.run(_config(args, overrides))
  print(json.dumps(report, indent=1) if args.json else cost.format_report(report))


def _bench(args, overrides):
  import json  # pylint: disable=g-import-not-at-top
  from research import cost  # pylint: disable=g-import-not-at-top
  result = cost.bench(_config(args, overrides), warmup=args.warmup, repeats=args.repeats)
  print(json.dumps(result, indent=1) if args.json else cost.format_bench(result))


def _ablate(args, overrides):
  from research import ablate  # pylint: disable=g-import-not-at-top
  print(ablate.describe(ablate.run(_config(args, overrides), args.out), args.out))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="run.py", description="convlab: what convolutional building blocks cost and what they buy.",
      epilog="With no command, trains experiments/default.py into workdirs/default.")
  commands = p.add_subparsers(dest="command", metavar="COMMAND")
  train = commands.add_parser("train", help="train and evaluate an experiment, resuming from its workdir",
                              description="Train an experiment; config keys are overridden with "
                              "--config.KEY=VALUE (e.g. --config.model.widths='(16,32)').")
  train.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file (default: experiments/default.py)")
  train.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where checkpoints and metrics go")
  train.set_defaults(run=_train, takes_overrides=True)
  evaluate = commands.add_parser("eval", help="evaluate a saved checkpoint on the test split",
                                 description="Print the test loss and accuracy of a checkpoint in a workdir, "
                                 "rebuilt from the config saved with it.")
  evaluate.add_argument("--workdir", default=DEFAULT_WORKDIR, help="the run's workdir")
  evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest valid one)")
  evaluate.set_defaults(run=_eval)
  filters = commands.add_parser("filters", help="write a labelled grid of classic filters applied to a photo",
                                description="Box and Gaussian blur, sharpen, Sobel x/y/magnitude and "
                                "laplacian, applied per channel with research.conv.")
  filters.add_argument("--image", default=None, help="image to filter (default: scikit-learn's china.jpg)")
  filters.add_argument("--out", default="filters.png", help="PNG to write (default: filters.png)")
  filters.set_defaults(run=_filters)
  cost = commands.add_parser("cost", help="parameters, analytic and XLA FLOPs, memory and time of blocks or a model",
                             description="Cost tables of an experiment's block variants (config.cost), or of "
                             "its model: every figure beside its ratio to the reference variant.")
  cost.add_argument("--config", default=COST_CONFIG, help="experiment file (default: experiments/cost_blocks.py)")
  cost.add_argument("--json", action="store_true", help="print the report as JSON (research.cost.COST_SCHEMA)")
  cost.set_defaults(run=_cost, takes_overrides=True)
  bench = commands.add_parser("bench", help="train-step throughput of an experiment's model and optimizer",
                              description="Steps/s and examples/s of the jitted train step on random data of "
                              "the dataset's shape (median over repeats, after warm-up).")
  bench.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file (default: experiments/default.py)")
  bench.add_argument("--json", action="store_true", help="print the result as JSON (research.cost.BENCH_SCHEMA)")
  bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
  bench.add_argument("--repeats", type=int, default=10, help="timed steps, at least 5 (default: 10)")
  bench.set_defaults(run=_bench, takes_overrides=True)
  ablate = commands.add_parser("ablate", help="train variants over seeds; tables and plots of accuracy and cost",
                               description="Run the ablation tables of an ablation config (each variant over "
                               "several seeds, resumable) and write Markdown tables, plots and JSON.")
  ablate.add_argument("--config", default=os.path.join(os.path.dirname(DEFAULT_CONFIG), "ablations.py"),
                      help="ablation file (default: experiments/ablations.py)")
  ablate.add_argument("--out", default=os.path.join("workdirs", "ablations"), help="where results and runs go")
  ablate.set_defaults(run=_ablate, takes_overrides=True)
  return p


def main(argv: list[str]) -> int:
  argv = argv or ["train"]
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  args = parser().parse_args([a for a in argv if not a.startswith("--config.")])
  if args.command is None:
    parser().print_help()
    return 2
  if overrides and not getattr(args, "takes_overrides", False):
    print(f"error: {args.command} takes no --config.KEY overrides", file=sys.stderr)
    return 2
  from absl import logging  # pylint: disable=g-import-not-at-top
  from research.errors import UserError  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # TFDS and Orbax warn about normal events (a dataset not yet prepared).
  try:
    args.run(args, overrides)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
