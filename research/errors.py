"""Errors a user can meet and fix. `run.py` prints each as one line, `error: ...`, and exits with
its `exit_code`:

| code | meaning |
|---:|---|
| 0 | done |
| 1 | internal error: a bug in convlab (the only case with a traceback; please report it) |
| 2 | user error: a config value, file, dataset, checkpoint or workdir to fix (`UserError`) |
| 3 | interrupted: SIGTERM or Ctrl-C stopped the run after saving it; rerun to resume |
| 4 | diverged: the loss or parameters stopped being finite; nothing was saved after it |
| 130 | aborted: a second Ctrl-C, or Ctrl-C outside training; nothing saved then |
"""

EXIT_ABORTED = 130  # The shell's code for a process ended by SIGINT.


class UserError(Exception):
  """Base class: the message says what is wrong, which key or file, and what to do."""

  exit_code = 2


class ConfigError(UserError):
  """A config value is unknown, of the wrong type or impossible; names the dotted key."""

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"config.{key}: {message}")


class DataError(UserError):
  """A dataset cannot be found, prepared or read."""


class CheckpointError(UserError):
  """A checkpoint or workdir is missing, corrupt, locked or incompatible."""


class CheckpointGone(CheckpointError):
  """A checkpoint was deleted while it was read, by the run training in the workdir (its keep
  policy)."""


class TrainingDiverged(UserError):
  """The loss or the parameters stopped being finite; names the step and the last good
  checkpoint."""

  exit_code = 4


class Interrupted(UserError):
  """SIGTERM or Ctrl-C stopped the run after it saved a checkpoint; rerunning resumes it."""

  exit_code = 3


def first_line(e: BaseException, with_type: bool = True, limit: int = 200) -> str:
  """`Type: the first line of its message` (or only the line, without `with_type`), cut to
  `limit` characters: how an error raised inside a library is quoted in one of ours."""
  lines = str(e).strip().splitlines()
  line = lines[0] if lines else ""
  if with_type:
    text = f"{type(e).__name__}: {line}" if line else type(e).__name__
  else:
    text = line or type(e).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."
