"""convlab's one entry point: `python run.py COMMAND [options]`; `python run.py` trains the default experiment."""

import argparse
import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "default.py")
DEFAULT_WORKDIR = os.path.join("workdirs", "default")


def _train(args, overrides):
  from research import config as config_lib, train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  train.train_and_evaluate(config, args.workdir)


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
