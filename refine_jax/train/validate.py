"""Up-front checks of a resolved config: one clear error per problem, naming field and fix."""

import math

import jax

from refine_jax import paths
from refine_jax.data import tokenizers
from refine_jax.models import config as model_config
from refine_jax.parallel import mesh as mesh_lib
from refine_jax.train import init_checkpoint, loop, optim, stages, update


def check_workdir(workdir):
  """A local path or a gs:// URL (refine_jax.paths), checked by writing and deleting a probe
  file: ValueError for another scheme or no gcsfs, FileNotFoundError for a missing bucket,
  PermissionError for missing credentials, each naming the URL and the fix."""
  paths.check_writable(workdir, "--workdir")


def _positive_int(value, name):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive integer.")


def validate_config(config, *, num_devices=None, process_count=None):
  """Raises ValueError on the first problem. Device counts default to the live JAX ones."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count

  stage = stages.stage_module(config.stage)  # an unknown stage: one line listing them
  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    raise ValueError(f"seed={config.seed!r} must be an integer.")

  # Model: the models package owns the per-field checks.
  model_config.validate(config.model)

  tc = config.train
  for name in ("batch_size", "steps"):
    _positive_int(tc[name], f"train.{name}")
  if not tc.lr > 0 or not math.isfinite(tc.lr):
    raise ValueError(f"train.lr={tc.lr!r} must be a positive number.")
  if tc.warmup_steps < 0:
    raise ValueError(f"train.warmup_steps={tc.warmup_steps} must be >= 0.")
  if not 0 <= tc.min_lr_ratio <= 1:
    raise ValueError(f"train.min_lr_ratio={tc.min_lr_ratio} must be in [0, 1].")
  if tc.eval_every < 0 or tc.eval_batches < 0:
    raise ValueError("train.eval_every and train.eval_batches must be >= 0 (0 = no eval).")

  seq_len = config.data.seq_len
  _positive_int(seq_len, "data.seq_len")
  chunk = config.model.chunk_size
  if config.model.arch in ("deltanet", "gated_deltanet") and seq_len % chunk:
    fit = max(chunk, (seq_len // chunk) * chunk)
    raise ValueError(f"data.seq_len={seq_len} is not a multiple of model.chunk_size={chunk}: "
                     f"every sequence would be padded inside the fast-weight kernel. Set "
                     f"data.seq_len to a multiple (e.g. {fit}) or model.chunk_size to a power "
                     "of two dividing it.")
  lact_chunk = config.model.lact.chunk if config.model.arch == "lact" else None
  if lact_chunk and lact_chunk > seq_len:
    raise ValueError(f"model.lact.chunk={lact_chunk} > data.seq_len={seq_len}: the fast weights "
                     "would never update during training; lower model.lact.chunk.")

  data, fsdp, tensor = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
  for name in ("microbatches", "ntp_epochs", "ntp_minibatches"):
    _positive_int(tc[name], f"train.{name}")
  if tc.ntp_epochs * tc.ntp_minibatches > 1 and config.stage != "pretrain":
    raise ValueError(f"train.ntp_epochs={tc.ntp_epochs} x train.ntp_minibatches="
                     f"{tc.ntp_minibatches} applies to the NTP stage (stage=pretrain), not "
                     f"stage={config.stage}; use refine.ppo_epochs / ppo_minibatches there.")
  # How the stage's step splits the batch: minibatches x microbatches x data-parallel devices.
  stage_minibatches = getattr(stage, "minibatches", None)
  field, mbs = stage_minibatches(config) if stage_minibatches else ("", 1)
  update.check_split(tc.batch_size, minibatches=mbs, minibatch_field=field,
                     microbatches=tc.microbatches, dp=data * fsdp)
  optim.make_optimizer(tc)  # its own checks: train.schedule, train.mu_dtype
  if loop.host_split(config) == "documents" and tc.batch_size % process_count:
    raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the number of "
                     f"processes {process_count}; use a multiple of it.")

  # The stage's own fields (refine.*, posttrain.*, ttt.*), so they fail here, as one line.
  stage_validate = getattr(stage, "validate", None)
  if stage_validate is not None:
    stage_validate(config)

  ck = config.checkpoint
  if ck.every_steps < 0 or ck.keep < 1:
    raise ValueError(f"checkpoint.every_steps={ck.every_steps} must be >= 0 (0 = only at the "
                     f"end) and checkpoint.keep={ck.keep} >= 1.")
  init_checkpoint.check_path(config.init_checkpoint)

  _check_vocab(config)


def _check_vocab(config):
  try:
    tok = tokenizers.get_tokenizer(config.data)
  except (ImportError, AttributeError):
    return
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                     f"tokenizer's vocab_size={tok.vocab_size} (data.tokenizer="
                     f"{config.data.tokenizer!r}); set model.vocab_size={tok.vocab_size}.")
