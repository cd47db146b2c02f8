"""Float32 where RL needs it: the LM head (model.logits_dtype) and ShortConv's accumulation.

With model.dtype=bfloat16 the blocks compute in bf16, but the logits that entropies, NTP,
log-probs and PPO ratios come from must not be bf16-rounded (bf16 steps are 0.125 once
|logit| >= 16), and the short conv sums in float32 as FLA's causal_conv1d does.
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from refine_jax.models import build_model, layers
from refine_jax.config import default_model_config

BF16_U = 2.0 ** -8   # bf16 unit roundoff: |bf16(x) - x| <= 2^-8 |x|


def _lm(tied: bool, **kw):
  c = default_model_config()
  c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = 32, 2, 1, 64, 8
  c.dtype, c.tie_word_embeddings = "bfloat16", tied
  for k, v in kw.items():
    c[k] = v
  m = build_model(c, rngs=nnx.Rngs(0))
  # Big head weights: |logit| ~ 20, where bf16 rounding is 0.0625..0.125.
  w = m.embeddings.embedding if tied else m.lm_head.kernel
  w[...] = w[...] * 200.0
  return m


def _head_weight(m, tied):
  """[D, V] float64 head matrix."""
  w = m.embeddings.embedding[...].T if tied else m.lm_head.kernel[...]
  return np.asarray(w, np.float64)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_are_a_float32_head_of_the_final_hidden_state(tied):
  m = _lm(tied)
  ids = jnp.arange(24).reshape(2, 12) % 64
  out = nnx.jit(lambda m, ids: m(ids))(m, ids)
  assert out.logits.dtype == jnp.float32
  h = np.asarray(out.hidden_states, np.float64)          # the head's float32 input
  want = h @ _head_weight(m, tied)                        # h_f32 @ W_f32, exactly
  scale = np.abs(want).max()
  assert scale > 16                                       # bf16 would round by >= 0.0625
  err = np.abs(np.asarray(out.logits, np.float64) - want).max()
  assert err <= 1e-6 * scale, (err, scale)                # float32 rounding only


@pytest.mark.parametrize("tied", [False, True])
def test_logits_dtype_model_restores_the_model_dtype_head(tied):
  m = _lm(tied, logits_dtype="model")
  ids = jnp.arange(24).reshape(2, 12) % 64
  out = nnx.jit(lambda m, ids: m(ids))(m, ids)
  logits = np.asarray(out.logits, np.float64)
  h = np.asarray(out.hidden_states, np.float32)
  w = _head_weight(m, tied)
  want = h.astype(np.float64) @ w
  scale = np.abs(want).max()
  if tied:
    # Old tied path: h rounded to model.dtype, then Embed's float32 attend.
    h16 = np.asarray(jnp.asarray(h, jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(logits, h16 @ w, rtol=0, atol=1e-6 * scale)
  else:
    # A bf16 Linear: bf16 operands and a bf16 result, so every logit sits on the bf16 grid.
    np.testing.assert_array_equal(logits, np.asarray(
        jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64))
  err = np.abs(logits - want).max()
  assert 1e-4 * scale < err <= 4 * BF16_U * scale, (err, scale)


def test_bad_logits_dtype_names_the_field():
  c = default_model_config()
  c.logits_dtype = "bfloat16"
  with pytest.raises(ValueError, match=r"model\.logits_dtype='bfloat16'.*float32.*model"):
    build_model(c, rngs=nnx.Rngs(0))


def _conv64(u, w, act):
  """Reference depthwise causal conv in float64: u [B, T, C], w [W, C]."""
  W, T = w.shape[0], u.shape[1]
  up = np.concatenate([np.zeros((u.shape[0], W - 1, u.shape[2])), u], 1)
  y = sum(up[:, j:j + T] * w[j] for j in range(W))
  return y / (1 + np.exp(-y)) if act else y


@pytest.mark.parametrize("act", [None, "silu"])
def test_short_conv_bf16_accumulates_in_float32(act):
  conv = layers.ShortConv(16, 4, activation=act, std=0.5, rngs=nnx.Rngs(0))
  u = jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 16)) * 3, jnp.bfloat16)
  y, cache = conv(u)
  assert y.dtype == cache.dtype == jnp.bfloat16
  # float32 conv of the bf16-rounded inputs (the float32 kernel as stored), one bf16 rounding
  u64 = np.asarray(u.astype(jnp.float32), np.float64)
  w64 = np.asarray(conv.kernel[...], np.float64)
  want = _conv64(u64, w64, act)
  slack = 1e-6 * np.abs(want).max()                      # float32 summation
  err = np.abs(np.asarray(y.astype(jnp.float32), np.float64) - want)
  assert np.all(err <= BF16_U * np.abs(want) + slack), err.max()
  # The bf16 sum it replaces (bf16 products and partial sums) breaks that bound: the check
  # can tell the two apart.
  full = jnp.concatenate([jnp.zeros((2, 3, 16), jnp.bfloat16), u], 1)
  w16 = conv.kernel[...].astype(jnp.bfloat16)
  old = sum(full[:, j:j + 11] * w16[j] for j in range(4))
  old = np.asarray((jax.nn.silu(old) if act else old).astype(jnp.float32), np.float64)
  assert np.any(np.abs(old - want) > BF16_U * np.abs(want) + slack)
  # Decode steps (T = 1 from the cache) round exactly as the full pass.
  c, steps = None, []
  for t in range(11):
    yt, c = conv(u[:, t:t + 1], c)
    steps.append(yt)
  np.testing.assert_array_equal(np.asarray(jnp.concatenate(steps, 1).astype(jnp.float32)),
                                np.asarray(y.astype(jnp.float32)))
