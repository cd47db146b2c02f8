"""A bf16 ReFINE step (model.dtype=bfloat16, as on accelerators) on CPU.

- The first PPO epoch's ratio is exactly 1: the policy log-probs recomputed by teacher forcing
  repeat the sampling pass's arithmetic, in bf16 too (ratio_dev = mean |ratio - 1| is 0.0).
- Its losses stay within bf16 rounding of the float32 step on the same weights: the tolerance
  is a few bf16 units in the last place (2^-8 relative) of the loss, not a value that passed.
"""

import jax
import numpy as np
import optax
from flax import nnx

from refine_jax.models import build_model
from refine_jax.refine import step as refine_step
from refine_jax.train import ppo
from refine_jax.config import default_model_config, default_refine_config

V, SEQ = 64, 48
BF16_EPS = 2.0 ** -8  # bf16 has 8 significant bits


def _model(dtype):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = (
      "deltanet", V, 64, 2, 2, 16)
  cfg.dtype = dtype
  return build_model(cfg, rngs=nnx.Rngs(0))  # params are float32 either way: the same values


def _batch(B=4):
  x = np.random.default_rng(0).integers(0, V, (B, SEQ + 1)).astype(np.int32)
  mask = np.ones((B, SEQ), np.float32)
  mask[1, 30:] = 0.0  # ragged
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": mask}


def _rcfg(**kw):
  rc = default_refine_config()
  rc.num_chunks, rc.rollout_len, rc.margin = 3, 3, 4
  rc.update(kw)
  return rc


def test_first_ppo_update_ratio_is_exactly_one_in_bf16():
  """The PPO builder's first update (collect, then one clipped update over 2 microbatches) and
  the fused step: the ratio is exactly 1 in bf16, so nothing is clipped by rounding."""
  graphdef, params, rest = nnx.split(_model("bfloat16"), nnx.Param, ...)
  sgd = optax.sgd(1e-2)
  rc = _rcfg(ppo_epochs=1, ppo_minibatches=1)
  step = ppo.ppo_step(rc)(graphdef, sgd, 2)
  _, _, out = jax.jit(step)(params, sgd.init(params), rest, _batch(), jax.random.key(1))
  assert float(out["valid_frac"]) > 0.5
  assert float(out["ratio_dev"]) == 0.0, float(out["ratio_dev"])
  assert float(out["clip_frac"]) == 0.0
  fused = jax.jit(lambda b, r: refine_step.refine_loss(nnx.merge(graphdef, params, rest), b, r,
                                                       rc))
  _, m = fused(_batch(), jax.random.key(1))
  assert float(m["ratio_dev"]) == 0.0 and float(m["clip_frac"]) == 0.0


def test_bf16_losses_within_bf16_rounding_of_float32():
  batch, rng = _batch(), jax.random.key(2)
  # Greedy rollouts from argmax positions: the same branches in both precisions unless a near
  # tie flips, so the loss difference is rounding, not sampling.
  rc = _rcfg(selection="argmax", temperature=0.0, group="sequence")
  out = {dt: jax.jit(lambda b, r, m=_model(dt): refine_step.refine_loss(m, b, r, rc))(batch, rng)
         for dt in ("float32", "bfloat16")}
  (l32, m32), (l16, m16) = out["float32"], out["bfloat16"]
  for key, a, b in (("loss", l32, l16), ("ntp_loss", m32["ntp_loss"], m16["ntp_loss"])):
    a, b = float(a), float(b)
    assert abs(b - a) <= 4 * BF16_EPS * abs(a), (key, a, b)
  # and bf16 did change something (the test would notice a silently float32 "bf16" model)
  assert float(m16["ntp_loss"]) != float(m32["ntp_loss"])
