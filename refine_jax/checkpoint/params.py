"""Parameters-only loading (config `init_checkpoint`): from a run dir, its checkpoints dir, one
step dir, or a bare Orbax pytree of params. Optimiser and data state are ignored on purpose."""

import os

import orbax.checkpoint as ocp
from absl import logging

from refine_jax import paths
from refine_jax.checkpoint import trees


def candidate_param_dirs(path):
  """Orbax `params` item directories under `path`, newest step first."""
  root = paths.as_path(path)  # a local path made absolute, or a gs:// URL
  if not paths.exists(root):
    raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist; give a run "
                            "directory, its checkpoints/ directory, one step directory, or an "
                            "Orbax params checkpoint.")
  if (root / "checkpoints").is_dir():
    root = root / "checkpoints"
  steps = sorted((int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                 reverse=True)
  if steps:
    return [root / str(s) / "params" for s in steps]
  if (root / "params").is_dir():
    return [root / "params"]
  return [root]


def find_run_config(path, max_up=4):
  """The run's config.json at `path` or up to `max_up` parents (step -> checkpoints -> run)."""
  d = paths.as_path(path)  # local or gs://
  d = d if paths.isdir(d) else d.parent
  for _ in range(max_up + 1):
    cand = d / "config.json"
    if paths.isfile(cand):
      return os.fspath(cand)
    if d.parent == d or (paths.is_remote(d) and len(d.parts) <= 3):  # / or gs://bucket
      break
    d = d.parent
  return None


def load_params(path, abstract_params):
  """Restores params into the structure/shardings of `abstract_params` (an nnx.State)."""
  target = trees.params_to_pure(abstract_params)
  errors = []
  for item_dir in candidate_param_dirs(path):
    try:
      pure = ocp.StandardCheckpointer().restore(item_dir, target)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("could not load params from %s (%s); trying an older step", item_dir, e)
      errors.append(f"{item_dir}: {type(e).__name__}: {str(e)[:300]}")
      continue
    logging.info("init_checkpoint: loaded params from %s", item_dir)
    return trees.params_from_pure(abstract_params, pure), os.fspath(item_dir)
  raise ValueError(f"checkpoint {os.fspath(path)!r}: no loadable params found. Tried:\n  " +
                   "\n  ".join(errors) + "\nThe checkpoint must come from a model with the same "
                   "model.* config.")
