"""The entry points' shared handling of user mistakes: one line on stderr and exit status 2,
never a traceback. `run` is the absl entry points' start (main, eval, experiments); `guard`,
`check_input` and `check_output` serve the argparse ones (convert, export, generate). A config file that does not
load and an unknown --config.* field fail inside ml_collections' flag parsing (an OSError or
AttributeError, which absl would print as a traceback); refine_jax.errors.UserError is what the
library raises for a mistake found while running (a missing file or a permission error
names its path). Anything else is a bug and keeps its traceback."""

import json
import os
import re
import sys

from absl import app, flags, logging
from safetensors import SafetensorError, safe_open

from refine_jax import platforms
from refine_jax.errors import UserError

platforms.skip_absent_tpu()  # before JAX picks its backends: no libtpu noise on CPU hosts

# Mistakes, not bugs: each names its file or field. The OSError kinds are paths given wrongly.
MISTAKES = (UserError, FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError,
            IsADirectoryError)


def one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _field_message(e: AttributeError, argv) -> str:
  text = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
  name = re.match(r"'?([\w.]+)'?", text)
  flag = lambda a: a.split("=")[0] + "."
  bad = [flag(a)[:-1] for a in argv
         if name and a.startswith("--config.") and f".{name.group(1)}." in flag(a)]
  where = bad[0] if bad else "a --config.* override"
  return (f"{where}: no such config field ({' '.join(text.split())}); see the config file's "
          "fields, or python -m refine_jax.main --config=FILE --helpfull.")


def parse_flags(argv):
  """app.run's flags_parser: bad flags and config files give one line."""
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if config is not None:  # a file that failed to load raises on first use: use it here
      config.keys()
    return rest
  except flags.Error as e:
    fail(f"{e}. Flags look like --config=configs/<stage>.py --config.train.steps=100 (the "
         "--config file first, then its overrides).")
  except (AttributeError, KeyError) as e:  # KeyError: a section the config does not have
    fail(_field_message(e, argv))
  except OSError as e:  # the config file: missing, unreadable, or raising while it loads
    errno_line = [l.strip() for l in str(e).splitlines() if "Errno" in l or "Error" in l]
    given = [a for a in argv if a.startswith("--config=")]
    fail(f"{given[0] if given else '--config'}: the config file could not be loaded "
         f"({errno_line[-1] if errno_line else str(e).splitlines()[0]}); give the path of a "
         f"config file, relative to where you run: {_config_files()}.")
  except (ValueError, TypeError) as e:  # e.g. --config.train.steps=abc
    fail(f"{' '.join(str(e).split())}")


def _config_files() -> str:
  """The configs/*.py a user can pass (those of the checkout this package runs from, else of
  the working directory)."""
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  for d in (here, "configs"):
    if os.path.isdir(d):
      names = sorted(n for n in os.listdir(d) if n.endswith(".py") and not n.startswith("_")
                     and n not in ("base.py",))
      if names:
        return ", ".join(f"configs/{n}" for n in names)
  return "e.g. configs/midtrain.py"


def run(main):
  """app.run(main) with parse_flags, and a mistake (MISTAKES) -> one line."""
  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:  # library INFO logs (Orbax) would drown the output
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except MISTAKES as e:
      fail(one_line(e))
  app.run(guarded, flags_parser=parse_flags)


def guard(prog: str, fn, *args) -> int:
  """fn(*args) for an argparse entry point; a mistake -> '<prog>: error: ...' and 2. ValueError
  counts too: the interop loaders raise it for bad input (a non-FLA config, a shape mismatch)."""
  try:
    return fn(*args)
  except MISTAKES + (ValueError,) as e:
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
    return 2


MODEL_DIRS = "a run dir, a bundle or an HF/FLA dir (config.json + model.safetensors)"


def check_input(flag: str, path: str, want: str = MODEL_DIRS):
  """A local model dir that is a plain file, or holds a corrupt .json / .safetensors file, fails
  here naming the file (the loaders' own errors do not). Missing paths, hub ids and gs:// pass:
  the loaders explain those."""
  if os.path.isfile(path):
    raise UserError(f"{flag} {path} is a file; give {want} (the directory, not a file in it).")
  if not os.path.isdir(path):
    return
  if not os.listdir(path):
    raise UserError(f"{flag} {path} is an empty directory; give {want}.")
  for name in sorted(os.listdir(path)):
    kind = name.rsplit(".", 1)[-1]
    if kind in ("json", "safetensors") and not _readable(os.path.join(path, name), kind):
      raise UserError(f"{flag} {path}: {name} is not a valid {kind} file (corrupt or "
                      "truncated); download or export it again.")


def _readable(path: str, kind: str) -> bool:
  try:
    if kind == "json":
      with open(path, "rb") as f:
        json.load(f)
    else:  # opening checks the header and that the tensors cover the file (a partial download)
      with safe_open(path, framework="numpy"):
        pass
    return True
  except (ValueError, SafetensorError):  # JSONDecodeError / UnicodeDecodeError are ValueErrors
    return False


def check_output(flag: str, path: str, src: str | None = None):
  """--out must be a directory (made if missing) other than the input it is written from."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag} {path} is a file; give a directory path (it is created if missing).")
  if src is not None and os.path.realpath(path) == os.path.realpath(src):
    raise UserError(f"{flag} {path} is the input itself; give a new directory so the input is "
                    "not overwritten.")
