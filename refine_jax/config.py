"""The base config every stage starts from (`base_config()`): the model.*, data.* defaults of
their owners plus train.*, mesh.*, checkpoint.*, init_checkpoint. It lives in the library so
that library code (bundles, tests' stand-ins) can rebuild a config without importing the
configs/ folder; configs/base.py re-exports it for the stage files.
"""

import importlib.util
import os
import sys

from ml_collections import config_dict

from refine_jax.data.config import default_data_config
from refine_jax.models import default_model_config


def _model_config():
  return default_model_config()


def _data_config():
  return default_data_config()


def base_config():
  c = config_dict.ConfigDict()
  c.stage = "pretrain"  # which refine_jax.train stage runs: pretrain | midtrain | posttrain | ttt
  c.seed = 0            # params init, per-step RNG (fold_in(seed, step)); data has its own seed

  # model.*: architecture and sizes (owned by refine_jax.models.default_model_config).
  c.model = _model_config()
  c.model.vocab_size = 259  # the default byte tokenizer: 256 bytes + pad/bos/eos

  # data.*: source, tokenizer, seq_len, packing (owned by refine_jax.data).
  c.data = _data_config()

  # train.*: optimiser and loop.
  c.train = config_dict.ConfigDict()
  c.train.batch_size = 8       # global sequences per step (split over mesh.data * mesh.fsdp)
  c.train.steps = 1000         # total optimiser steps (a resumed run stops at the same step)
  c.train.lr = 3e-4            # peak AdamW learning rate
  c.train.warmup_steps = 100   # linear warmup from 0
  c.train.schedule = "cosine"  # after warmup: cosine | constant | linear
  c.train.min_lr_ratio = 0.1   # final lr = lr * min_lr_ratio (cosine / linear)
  c.train.weight_decay = 0.1   # decoupled, on matrices only (decay_all: on every parameter)
  c.train.decay_all = False    # True = the official ReFINE code's AdamW (decays norms/biases too)
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0      # global-norm clip; 0 disables
  c.train.microbatches = 1     # split each (per-update) batch into N sequential microbatches; grads are averaged (gradient accumulation, one jitted step)
  # NTP stages: passes over each batch x minibatches per pass (one update each); > 1 gives an
  # SFT baseline with ReFINE's update count (refine.ppo_epochs x refine.ppo_minibatches).
  c.train.ntp_epochs = 1
  c.train.ntp_minibatches = 1
  c.train.mu_dtype = "float32" # AdamW first-moment dtype: float32 | bfloat16 (saves 2 bytes/param)
  c.train.eval_every = 100     # held-out perplexity every N steps (and at the end); 0 = never
  c.train.eval_batches = 4     # batches of the held-out split per eval
  c.train.progress_bar = True  # tqdm bar with loss and tokens/s (process 0)

  # mesh.*: devices per axis (data x fsdp x tensor); -1 = all remaining devices.
  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1    # pure data parallel (batch split, params replicated)
  c.mesh.fsdp = 1     # batch split + params/optimiser sharded on the embed dimension
  c.mesh.tensor = 1   # heads / mlp / vocab split
  # Multi-process launches (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS): how long each process
  # waits for all the others at the coordinator before it exits with an error.
  c.mesh.dist_timeout_s = 300

  # checkpoint.*: Orbax, under <workdir>/checkpoints.
  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.every_steps = 200  # save every N steps (and at the last step); 0 = only at the end
  c.checkpoint.keep = 3           # keep the newest N steps
  c.checkpoint.async_save = True  # write in the background while training continues

  # Params-only start point: a run dir, its checkpoints/ dir, a step dir, an Orbax params
  # checkpoint, a bundle, an HF/FLA dir or a hub id hf://owner/name[@revision]. One that carries
  # a config brings its model.* and tokenizer (train/init_checkpoint.py). Ignored when the
  # workdir already has a checkpoint (that one resumes).
  c.init_checkpoint = ""

  # refine.*: ReFINE fields; filled in by configs/midtrain.py (and the other ReFINE stages).
  c.refine = config_dict.ConfigDict()
  return c


def tiny_deltanet(c):
  """The tiny DeltaNet every stage's embedded default trains on a laptop CPU in minutes
  (~0.6M params with the byte tokenizer). Scale up with --config.model.* overrides."""
  c.model.arch = "deltanet"
  c.model.hidden = 128
  c.model.layers = 2
  c.model.heads = 2
  c.model.chunk_size = 64
  return c


def config_file(here: str, relpath: str):
  """The config module at `relpath` beside the file `here` (a config file's __file__), loaded by
  its path: config files build on one another (recall.py on midtrain.py, the paper presets on
  paper/common.py) from any working directory, with no sys.path edits. Loaded once per path."""
  path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(here)), relpath))
  key = f"refine_jax_config_file:{path}"
  if key not in sys.modules:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{here}: the config file {relpath!r} it builds on is not at {path}.")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[key]
      raise
  return sys.modules[key]
