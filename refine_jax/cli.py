"""The absl entry points' shared start (main, eval, experiments): flags and user mistakes
become one line on stderr and exit status 2, never a traceback. A config file that does not
load and an unknown --config.* field fail inside ml_collections' flag parsing (an OSError or
AttributeError, which absl would print as a traceback); refine_jax.errors.UserError is what the
library raises for a mistake found while running (a missing file or a permission error
names its path). Anything else is a bug and keeps its traceback."""

import re
import sys

from absl import app, flags

from refine_jax.errors import UserError


def fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _field_message(e: AttributeError, argv) -> str:
  text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
  name = re.match(r"'?([\w.]+)'?", text)
  bad = [a.split("=")[0] for a in argv if name and a.split("=")[0].endswith("." + name.group(1))]
  where = bad[0] if bad else "a --config.* override"
  return (f"{where}: no such config field ({' '.join(text.split())}); see the config file's "
          "fields, or python -m refine_jax.main --config=FILE --helpfull.")


def parse_flags(argv):
  """app.run's flags_parser: bad flags and config files give one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}. Flags look like --config=configs/<stage>.py --config.train.steps=100 (the "
         "--config file first, then its overrides).")
  except AttributeError as e:
    fail(_field_message(e, argv))
  except OSError as e:  # the config file: missing, unreadable, or raising while it loads
    errno_line = [l.strip() for l in str(e).splitlines() if "Errno" in l or "Error" in l]
    given = [a for a in argv if a.startswith("--config=")]
    fail(f"{given[0] if given else '--config'}: the config file could not be loaded "
         f"({errno_line[-1] if errno_line else str(e).splitlines()[0]}); give the path of a "
         "file in configs/ (e.g. --config=configs/midtrain.py), relative to where you run.")
  except (ValueError, TypeError) as e:  # e.g. --config.train.steps=abc
    fail(f"{' '.join(str(e).split())}")


def run(main):
  """app.run(main) with parse_flags, and UserError -> one line."""
  def guarded(argv):
    try:
      return main(argv)
    except (UserError, FileNotFoundError, PermissionError) as e:  # they name the file / field
      fail(" ".join(str(e).split()))
  app.run(guarded, flags_parser=parse_flags)
