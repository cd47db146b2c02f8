"""ReFINE on packed rows: a rollout from a position in a row's second document scores exactly
as from the same position of that document run alone (log-probs and the reward's hidden
states come from the document's own state), and selection keeps its margin and the
continuation inside the document."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.models import build_model, segments
from refine_jax.refine import policy, rollout, selection
from refine_jax.refine import step as refine_step
from refine_jax.config import default_model_config, default_refine_config

V = 48


def _model(arch):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = (
      arch, V, 32, 2, 2, 8)
  if arch == "lact":
    cfg.lact.chunk, cfg.lact.window = 8, 8
  return build_model(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("arch", ["deltanet", "lact"])
def test_rollout_logprobs_from_packed_row_equal_document_alone(arch):
  model = _model(arch)
  rng = np.random.default_rng(0)
  first, second = rng.integers(0, V, 13), rng.integers(0, V, 27)  # doc 2 starts mid-chunk
  row = np.concatenate([first, second]).astype(np.int32)[None]
  seg = np.concatenate([np.ones(13), 2 * np.ones(27)]).astype(np.int32)[None]
  alone = second.astype(np.int32)[None]
  rc = default_refine_config()
  rc.rollout_len, rc.temperature = 3, 1.0
  pos_alone = jnp.array([[4, 11, 19]], jnp.int32)
  tokens = jnp.asarray(rng.integers(0, V, (3, 3)), jnp.int32)

  def score(inputs, seg_ids, pos):
    out = refine_step.forward(model, jnp.asarray(inputs), seg_ids, capture=True)
    lp = policy.policy_logprobs(model, out, pos, tokens, rc)
    cache = model.cache_at(out.captured, pos, inputs.shape[1] + 3)
    hid, _ = rollout.feed_tokens(model, cache, tokens)
    return lp, hid

  lp_a, hid_a = jax.jit(lambda: score(alone, None, pos_alone))()
  lp_p, hid_p = jax.jit(lambda: score(row, jnp.asarray(seg), pos_alone + 13))()
  scale = float(jnp.max(jnp.abs(lp_a)))
  np.testing.assert_allclose(lp_p, lp_a, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(hid_p, hid_a, rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(hid_a))))
  # Without segment_ids the earlier document leaks in (the check above can fail).
  lp_leak, _ = jax.jit(lambda: score(row, None, pos_alone + 13))()
  assert float(jnp.max(jnp.abs(lp_leak - lp_a))) > 1e-3 * scale


def test_selection_margin_and_continuation_stay_in_the_document():
  seg = np.array([[1] * 10 + [2] * 14 + [0] * 8], np.int32)
  ok = np.asarray(selection.valid_positions(32, 3, 4, None, seg))[0]
  # doc 1: [4, 10 - 3] (margin 4, continuation p..p+2 inside); doc 2 starts at 10: [14, 21];
  # padding (a document of its own, starting at 24): [28, 29]
  want = [t for t in range(32) if 4 <= t <= 7 or 14 <= t <= 21 or 28 <= t <= 29]
  assert list(np.flatnonzero(ok)) == want
  np.testing.assert_array_equal(segments.doc_start(jnp.asarray(seg))[0],
                                [0] * 10 + [10] * 14 + [24] * 8)
