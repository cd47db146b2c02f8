"""LM branch_tokens: rollout tokens scored layer by layer from each layer's own cache at their
positions (what the PPO update runs). Its logits, the log-probs `policy_forward` makes of them
and their gradients equal cache_at + feeding the tokens, for every mixer, on packed rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.config import default_refine_config
from refine_jax.refine import policy, rollout
from test_refine_capture import V, _model, _packed


@pytest.mark.parametrize("arch,over", [("gated_deltanet", {}),
                                       pytest.param("deltanet", {"scan_layers": False},
                                                    marks=pytest.mark.slow),
                                       pytest.param("transformer", {}, marks=pytest.mark.slow),
                                       pytest.param("lact", {}, marks=pytest.mark.slow)],
                         ids=["gated", "unrolled", "attention", "lact"])
def test_branch_logprobs_and_gradients_equal_feeding_from_the_caches(arch, over):
  model = _model(arch, **over)
  inputs, seg, pos = _packed()
  rc = default_refine_config()
  rc.rollout_len, rc.rollouts_per_position, rc.temperature = 4, 2, 0.8
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, V, (16, 4)), jnp.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def score(params, fused):
    m = nnx.merge(graphdef, params, rest)
    if fused:
      out, lp = policy.policy_forward(m, inputs, seg, pos, tokens, rc)
    else:
      out = m(inputs, segment_ids=seg, capture_at=pos)
      lp = policy.policy_logprobs(m, out, pos, tokens, rc)
    return jnp.sum(lp * jnp.arange(1.0, 5.0)) + 0.1 * jnp.sum(out.logits[:, ::5]), lp

  run = lambda fused: jax.jit(jax.value_and_grad(lambda p: score(p, fused), has_aux=True))(params)
  (v_ref, lp_ref), g_ref = run(False)
  (v_br, lp_br), g_br = run(True)
  np.testing.assert_allclose(lp_br, lp_ref, rtol=0, atol=1e-5 * (1 + float(jnp.abs(lp_ref).max())))
  np.testing.assert_allclose(v_br, v_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_br)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * (1e-3 + float(jnp.max(jnp.abs(a)))))


def test_branch_tokens_take_their_layer_caches_and_keep_none():
  model = _model("deltanet")
  inputs, seg, pos = _packed()
  toks = jnp.zeros((8, 3), jnp.int32)
  out = model(inputs, segment_ids=seg, capture_at=pos, branch_tokens=toks)
  assert out.branch_logits.shape == (8, 3, V) and out.captured is None
  # The same logits as feeding the tokens from cache_at's caches, and the sequence untouched.
  plain = model(inputs, segment_ids=seg, capture_at=pos)
  cache = model.cache_at(plain.captured, pos, inputs.shape[1] + 3)
  _, fed = rollout.feed_tokens(model, cache, toks)
  np.testing.assert_allclose(out.branch_logits, fed, rtol=0,
                             atol=1e-5 * (1 + float(jnp.abs(fed).max())))
  np.testing.assert_array_equal(out.logits, plain.logits)
  for bad, where in ((dict(branch_tokens=toks), "no capture_at"),
                     (dict(capture_at=pos, branch_tokens=jnp.zeros((5, 3), jnp.int32)), "rows")):
    with pytest.raises(ValueError, match="branch_tokens must be \\[G, m\\]"):
      model(inputs, **bad)
