"""`UserError`: a mistake in what the user gave (config, files, run directory), found after
validation (e.g. while restoring a run). Its message names the thing and the fix; the entry
points print it as one line and exit 2. Anything else that escapes is a bug and keeps its
traceback."""


class UserError(ValueError):
  pass
