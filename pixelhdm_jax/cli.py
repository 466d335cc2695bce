"""`run(main)`: the launchers' `app.run`, where a user's mistake ends in one line and exit status 2, not a traceback.

A mistake is a flag absl rejects (unknown, missing, malformed), a `--config` string or override the config cannot
take (a misspelt field, an unknown preset), an `app.UsageError`, a `ConfigError` from `validate`, a path that
cannot be read or written (`OSError`), or one of the launcher's own `user_errors`. Each prints
`<launcher>: error: <message>` on stderr; `--help`, `--helpshort` and `--helpfull` print the usage and exit 0.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from ml_collections import config_flags

from pixelhdm_jax.errors import ConfigError

BASE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "base.py"
USAGE_STATUS = 2  # as argparse: the command line was wrong
_SUGGESTION = re.compile(r'Did you mean "([^"]+)"')
_CONFIG_FILE_ERROR = "Error whilst parsing config file"  # how config_flags wraps the error of get_config()


def fail(message: str) -> NoReturn:
  """Prints `<launcher>: error: message` on stderr and exits with status 2."""
  sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")
  sys.exit(USAGE_STATUS)


def _root(error: BaseException) -> BaseException:
  """The first exception of a chain (config_flags re-raises a config file's error with its traceback inlined)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def _unknown_field(error: LookupError, argv: Sequence[str]) -> str:
  """`--config.a.b=1` names a field the config lacks: the flag, the field and ml_collections' suggestion."""
  field = str(_root(error).args[0])
  names = [arg.split("=")[0].split(".") for arg in argv if arg.startswith("-")]
  parts = next((n for n in names if field in n[1:]), ["--config", field])
  suggestion = _SUGGESTION.search(str(error))
  hint = ""
  if suggestion:
    fixed = [suggestion.group(1) if part == field else part for part in parts]
    hint = f": did you mean {'.'.join(fixed)}?"
  return f"{'.'.join(parts)}: the config has no field {field!r}{hint}"


def _flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for an error raised while parsing the command line."""
  if isinstance(error, (AttributeError, KeyError)):
    return _unknown_field(error, argv)
  if _CONFIG_FILE_ERROR in str(error):  # the config file's own error, e.g. configs/base.py's unknown preset
    return str(_root(error))
  return f"{error}\n(python {argv[0]} --help lists the flags)"


def _check_config_files() -> None:
  """A `--config` file that does not exist fails here; config_flags would report it only when first read."""
  for name in flags.FLAGS:
    try:
      given = getattr(flags.FLAGS[name], "config_filename", None)
    except flags.Error:  # a config flag left unset
      continue
    if given and not os.path.isfile(given.split(":")[0]):
      fail(f"--{name}={given}: no such file {given.split(':')[0]!r}: give a config file and preset, e.g. "
           f"--{name}=configs/base.py:tiny (paths are relative to the current directory)")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser with one-line errors; asking for help is no error (absl exits 1 after the usage)."""
  try:
    remaining = flags.FLAGS(argv)
  except SystemExit as exit_:
    if exit_.code == 1 and any(a.lstrip("-").split("=")[0] in ("help", "helpshort", "helpfull", "?") for a in argv):
      sys.exit(0)
    raise
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as error:
    fail(_flag_error(error, argv))
  _check_config_files()
  return remaining


def _describe(error: BaseException) -> str:
  """The message of a user error; a path error also says what to check."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    fix = ("choose a location you can write to, or change its permissions" if isinstance(error, PermissionError)
           else "check the path")
    return f"{error.filename}: {error.strerror}: {fix}"
  return str(error)


def define_config(default_preset: str, help_text: str):
  """The `--config` flag with the default `configs/base.py:<default_preset>`, found wherever the launcher runs from.

  config_flags parses a default (and its `--config.*` overrides) as the flag is defined, before `run`: a
  misspelt override is reported here, in one line.
  """
  try:
    return config_flags.DEFINE_config_file("config", f"{BASE_CONFIG}:{default_preset}", help_text)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as error:
    fail(_flag_error(error, sys.argv))


def run(main: Callable[[list[str]], object], user_errors: tuple[type[BaseException], ...] = ()) -> None:
  """`app.run(main)`: user mistakes (see the module docstring, plus `user_errors`) become one line and exit 2."""

  def guarded(argv: list[str]) -> object:
    try:
      return main(argv)
    except (app.UsageError, ConfigError, OSError, *user_errors) as error:
      fail(_describe(error))

  app.run(guarded, flags_parser=_parse_flags)
