"""Errors a user can meet and fix. `run.py` prints them as one line and exits 2."""


class UserError(Exception):
  """Base class: the message says what is wrong, which key or file, and what to do."""


class ConfigError(UserError):
  """A config value is unknown, of the wrong type or impossible; names the dotted key."""

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"config.{key}: {message}")


class DataError(UserError):
  """A dataset cannot be found, prepared or read."""


class CheckpointError(UserError):
  """A checkpoint or workdir is missing, corrupt, locked or incompatible."""


class TrainingDiverged(UserError):
  """The loss or the parameters stopped being finite;
  names the step and the last good checkpoint."""


class Interrupted(UserError):
  """SIGTERM stopped the run after it saved a checkpoint; rerunning the same command resumes it."""
