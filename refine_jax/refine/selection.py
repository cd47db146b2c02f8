"""Where to branch: pick one rollout start position per chunk of each sequence.

A selected position p means: the prefix is inputs[:, :p+1], the next-token distribution at p
(logits[:, p]) gives the first rollout token, and the true continuation is targets[:, p:p+k]
(= inputs[:, p+1:p+k+1]). So the entropy at p is the uncertainty of exactly the token the
rollout starts with.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from refine_jax.models import segments

MODES = ("entropy", "uniform", "argmax", "argmin")


def token_entropy(logits_BTV):
  """Entropy (nats) of softmax(logits) at every position: [B, T] float32."""
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def smooth(x_BT, kernel):
  """Centred moving average with an odd kernel; edges average only the in-range values."""
  if kernel < 1 or kernel % 2 == 0:
    raise ValueError(f"refine.smooth_kernel must be odd and >= 1, got {kernel}; "
                     "use e.g. 5 (the paper uses rollout_len, rounded up to odd).")
  if kernel == 1:
    return x_BT
  T, half = x_BT.shape[1], kernel // 2
  ones = jnp.ones((kernel,), x_BT.dtype)
  if kernel <= T:
    same = lambda r: jnp.convolve(r, ones, mode="same")
  else:  # "same" would return `kernel` values; the centred window is a slice of "full"
    same = lambda r: jnp.convolve(r, ones, mode="full")[half:half + T]
  return jax.vmap(same)(x_BT) / same(jnp.ones(T, x_BT.dtype))


def chunk_ids(T, num_chunks):
  """[T] int32: which of num_chunks near-equal contiguous chunks each position is in."""
  if not 1 <= num_chunks <= T:
    raise ValueError(f"refine.num_chunks={num_chunks} must be in [1, seq_len={T}].")
  return (jnp.arange(T) * num_chunks // T).astype(jnp.int32)


def _in_chunk(T, num_chunks, lengths_B=None):
  """[B or 1, c, T] bool: position t is in chunk j of its row (all rows length T, or each
  its own length; positions past a row's length are in no chunk)."""
  c_c1 = jnp.arange(num_chunks)[:, None]
  if lengths_B is None:
    return (chunk_ids(T, num_chunks)[None, :] == c_c1)[None]
  L_B1 = jnp.clip(jnp.asarray(lengths_B, jnp.int32), 1, T)[:, None]
  t_1T = jnp.arange(T)[None]
  ids_BT = jnp.where(t_1T < L_B1, t_1T * num_chunks // L_B1, num_chunks)
  return ids_BT[:, None, :] == c_c1[None]


def valid_positions(T, rollout_len, margin, loss_mask_BT=None, segment_ids_BT=None):
  """[B or 1, T] bool: positions whose k-token true continuation exists (p + k <= T),
  that leave at least `margin` tokens of prefix (p >= margin), and (with a loss mask) whose
  k continuation targets are all real training targets (no document boundary / padding).
  With segment_ids (packed documents that the model keeps apart) the margin counts from the
  position's own document start, and the continuation must stay inside that document."""
  t_T = jnp.arange(T)
  ok_1T = ((t_T + rollout_len <= T) & (t_T >= margin))[None]
  if segment_ids_BT is not None:
    seg = jnp.asarray(segment_ids_BT)
    start_BT = segments.doc_start(seg)
    # input p + j must be in p's document for j < k (target p + k - 1 is input p + k: the loss
    # mask covers that last step, which the pipeline zeroes across documents).
    last = jnp.minimum(t_T + rollout_len - 1, T - 1)
    same_BT = start_BT[:, last] == start_BT
    ok_1T = ok_1T & (t_T[None] - start_BT >= margin) & same_BT
  if loss_mask_BT is None:
    return ok_1T
  # window_sum[p] = sum(mask[p : p+k]); all-ones means the whole continuation is trained on.
  m_BT = (loss_mask_BT > 0).astype(jnp.int32)
  csum = jnp.pad(jnp.cumsum(m_BT, axis=1), ((0, 0), (1, 0)))
  end = jnp.minimum(t_T + rollout_len, T)
  window_BT = csum[:, end] - csum[:, t_T]
  return ok_1T & (window_BT == rollout_len)


def allowed(B, T, *, num_chunks, rollout_len, margin=0, loss_mask_BT=None, lengths_B=None,
            segment_ids_BT=None):
  """[B, c, T] bool: position t may be chosen for chunk j of row b. A chunk is valid
  (`.any(-1)`) iff it has such a position: this depends on the masks only, so the GRPO term's
  weight is known before the forward pass (refine.step.objective's weights)."""
  ok_BT = jnp.broadcast_to(valid_positions(T, rollout_len, margin, loss_mask_BT,
                                           segment_ids_BT), (B, T))
  return ok_BT[:, None, :] & _in_chunk(T, num_chunks, lengths_B)


def _categorical(rng, logits_BcT):
  """One draw per (row, chunk); rng is one key or one key per row ([B] keys: each row's draw
  then depends on its own key only, whatever batch it sits in)."""
  if jnp.ndim(rng) == 0:
    return jax.random.categorical(rng, logits_BcT, axis=-1)
  return jax.vmap(lambda r, l: jax.random.categorical(r, l, axis=-1))(rng, logits_BcT)


def select_positions(rng, entropy_BT, *, num_chunks, rollout_len, mode="entropy", tau=1.0,
                     smooth_kernel=None, margin=0, loss_mask_BT=None, lengths_B=None,
                     segment_ids_BT=None):
  """One position per chunk per sequence. rng: one key, or [B] keys (one per row).

  lengths_B: each row's real length in a right-padded batch (post-training prompts, TTT); the
  c chunks then split [0, length) of each row, not the padded T (else a 200-token prompt in a
  512 batch would get half its positions).

  Returns (positions_Bc int32, valid_Bc bool, score_BT). A chunk with no valid position
  (tiny T, or all masked) gets valid=False and position clipped into range; callers must
  weight it out. `score_BT` is the smoothed entropy the choice used (for metrics).
  mode: entropy (sample softmax(H/tau) in the chunk), uniform, argmax, argmin.
  """
  if mode not in MODES:
    raise ValueError(f"refine.selection={mode!r}; choose one of {MODES}.")
  B, T = entropy_BT.shape
  if smooth_kernel is None:
    smooth_kernel = rollout_len + (1 - rollout_len % 2)
  score_BT = smooth(jax.lax.stop_gradient(entropy_BT).astype(jnp.float32), smooth_kernel)
  allowed_BcT = allowed(B, T, num_chunks=num_chunks, rollout_len=rollout_len, margin=margin,
                        loss_mask_BT=loss_mask_BT, lengths_B=lengths_B,
                        segment_ids_BT=segment_ids_BT)
  if mode == "entropy":
    logits_BcT = jnp.broadcast_to((score_BT / tau)[:, None, :], allowed_BcT.shape)
  elif mode == "uniform":
    logits_BcT = jnp.zeros(allowed_BcT.shape, jnp.float32)
  elif mode == "argmax":
    logits_BcT = jnp.broadcast_to(score_BT[:, None, :], allowed_BcT.shape)
  else:
    logits_BcT = jnp.broadcast_to(-score_BT[:, None, :], allowed_BcT.shape)
  logits_BcT = jnp.where(allowed_BcT, logits_BcT, -jnp.inf)
  if mode in ("entropy", "uniform"):
    pos_Bc = _categorical(rng, jnp.where(allowed_BcT, logits_BcT, -1e30))
  else:
    pos_Bc = jnp.argmax(logits_BcT, axis=-1)
  valid_Bc = jnp.any(allowed_BcT, axis=-1)
  pos_Bc = jnp.clip(pos_Bc, 0, max(T - rollout_len, 0)).astype(jnp.int32)
  return pos_Bc, valid_Bc, score_BT
