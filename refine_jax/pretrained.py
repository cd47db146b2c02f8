"""`load_pretrained(path) -> (model, config)` for every kind of saved model.

Accepted paths (detected in this order):
  hub id     hf://owner/name[@revision], or a bare owner/name when no such local path exists:
             downloaded once into the HF cache (refine_jax.interop.hub), then read as HF / FLA
  bundle     a dir from `refine_jax.convert` / `refine_jax.export` (bundle.json marks it)
  HF / FLA   a dir with config.json (model_type delta_net | gated_deltanet) + safetensors
  run dir    a training run (config.json + checkpoints/): params of the newest good step
  Orbax      a run's checkpoints/ dir, one step dir (checkpoints/<step>) or its params/ item;
             the run's config.json is found in a parent dir (or pass `config=`)
The model's params are float32; config is a ConfigDict (model.*, data.* with the tokenizer).
"""
from __future__ import annotations

import json
import os

from refine_jax import paths
from refine_jax.checkpoint import load_params
from refine_jax.checkpoint.params import find_run_config
from refine_jax.interop import bundle, hf_checkpoint, hub, modelio


def load_pretrained(path: str, *, config=None):
  """(model, config) from a hub id, a bundle, an HF/FLA dir, a run dir or an Orbax checkpoint.

  config: only needed for a bare Orbax params checkpoint with no run config.json above it.
  """
  path = hub.local_dir(os.fspath(path), bare=True)
  if not paths.exists(path):  # local or gs://
    raise FileNotFoundError(
        f"load_pretrained: {path!r} does not exist; give a run directory, an Orbax "
        "checkpoint (a run's checkpoints/<step>), an exported/converted bundle or an HF/FLA "
        "checkpoint directory.")
  if bundle.is_bundle(path):
    return bundle.load_bundle(path)
  if hf_checkpoint.is_hf_dir(path):
    model, cfg, _ = hf_checkpoint.load_hf(path)
    return model, cfg
  return _load_orbax(path, config)


def _load_orbax(path: str, config):
  if config is None:
    cfg_path = find_run_config(path)
    if cfg_path is None:
      raise FileNotFoundError(
          f"load_pretrained: no config.json in {path!r} or its parent dirs, so the model "
          "cannot be rebuilt; give the run directory (it holds config.json) or an exported "
          "bundle / HF dir (from Python, load_pretrained(path, config=...) also works).")
    config = bundle.config_from_dict(json.loads(paths.read_text(cfg_path)))
  _, abs_params, _ = modelio.abstract_state(config.model)
  params, _ = load_params(path, abs_params)
  return modelio.model_from_state(config.model, params), config
