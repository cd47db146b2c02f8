"""Greedy cached decoding equals argmax over repeated full forwards (mixed prompt lengths)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.eval import decode
from refine_jax.models import build_model
from refine_jax.config import default_model_config


def _tiny(arch="deltanet", vocab=40):
  c = default_model_config()
  c.arch, c.vocab_size, c.hidden, c.layers, c.heads, c.chunk_size = arch, vocab, 32, 2, 2, 8
  return build_model(c, rngs=nnx.Rngs(0))


def _reference(model, prompts, n, width=32):
  """argmax of full forwards; right-padding to one width (causal) keeps a single compile."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, ids: nnx.merge(graphdef, st)(ids).logits)
  outs = [[] for _ in prompts]
  for _ in range(n):
    padded = np.zeros((len(prompts), width), np.int32)
    for r, (p, o) in enumerate(zip(prompts, outs)):
      padded[r, :len(p) + len(o)] = list(p) + o
    logits = np.asarray(forward(state, jnp.asarray(padded)))
    for r, (p, o) in enumerate(zip(prompts, outs)):
      o.append(int(np.argmax(logits[r, len(p) + len(o) - 1])))
  return outs


@pytest.mark.parametrize("arch", ["deltanet", "transformer",
                                  pytest.param("gated_deltanet", marks=pytest.mark.slow)])
def test_greedy_decode_matches_full_forward_argmax(arch):
  model = _tiny(arch)
  rng = np.random.default_rng(0)
  # Lengths differ inside a batch (forced tails) and across batches; one prompt is 1 token.
  prompts = [rng.integers(0, 40, n).tolist() for n in (5, 21, 1, 13)]
  got = decode.greedy_decode(model, prompts, max_new_tokens=4, batch_size=3, prefill_bucket=4)
  assert got == _reference(model, prompts, 4)


def test_greedy_decode_stops_at_eos_and_drops_it():
  model = _tiny()
  prompt = [3, 7, 9]
  ref = _reference(model, [prompt], 5)[0]
  eos = ref[2]  # pretend the third generated token is eos
  got = decode.greedy_decode(model, [prompt, prompt + [1]], max_new_tokens=5, eos_id=eos)
  assert got[0] == ref[:ref.index(eos)]
  assert eos not in got[1]


def test_decode_text_prepends_bos_and_decodes():
  tok = ByteTokenizer()
  model = _tiny(vocab=tok.vocab_size)
  text = decode.decode_text(model, tok, ["ab"], max_new_tokens=3)[0]
  ids = decode.greedy_decode(model, [[tok.bos_id, 97, 98]], max_new_tokens=3,
                             eos_id=tok.eos_id)[0]
  assert text == tok.decode(ids)


def test_bad_input_errors():
  model = _tiny()
  with pytest.raises(ValueError, match="empty"):
    decode.greedy_decode(model, [[1], []], max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    decode.greedy_decode(model, [[1]], max_new_tokens=-1)


def test_per_row_budgets_equal_decoding_each_row_alone():
  """max_new_tokens given per prompt: each row gets exactly its own budget, the same tokens
  as decoding it alone (a row's budget never depends on its batch mates)."""
  model = _tiny()
  prompts = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5, 8, 9, 7], [2, 7, 1]]
  budgets = [3, 0, 6, 1]
  got = decode.greedy_decode(model, prompts, max_new_tokens=budgets, batch_size=4,
                             prefill_bucket=2)
  assert [len(g) for g in got] == budgets
  ref = _reference(model, prompts, max(budgets))  # greedy: a shorter budget is a prefix
  assert got == [r[:n] for r, n in zip(ref, budgets)]
  with pytest.raises(ValueError, match="one per prompt"):
    decode.greedy_decode(model, prompts, max_new_tokens=[1, 2])
