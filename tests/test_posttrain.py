"""Nested post-training: the inner update sees only prompt tokens, the outer only answer
tokens, the fused step equals two hand-made updates, QA files load, and a run resumes."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import posttrain as posttrain_config  # pylint: disable=g-import-not-at-top
from refine_jax.data import tasks as tasks_lib
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.models import build_model
from refine_jax.train import losses, optim, posttrain, qa_data

TOK = ByteTokenizer()
T = 64
PROMPT_CHARS = "abcdefghij klmnopqrstuvwxyz"
ANSWER_CHARS = "0123456789"   # never in a prompt: their embedding rows are answer-only


def tiny_config(mode="nested_refine", **over):
  c = posttrain_config.get_config()
  c.model.hidden, c.model.layers, c.model.heads, c.model.chunk_size = 32, 1, 2, 16
  c.data.seq_len = T
  c.train.batch_size, c.train.steps, c.train.warmup_steps = 2, 4, 0
  c.train.eval_every, c.train.eval_batches, c.train.progress_bar = 0, 1, False
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  c.refine.num_chunks, c.refine.rollout_len, c.refine.margin = 2, 3, 4
  c.posttrain.mode, c.posttrain.warmup_steps, c.posttrain.answer_cap = mode, 0, 4
  c.eval.num_samples, c.eval.plots = 2, False
  c.update_from_flattened_dict(over)
  return c


def samples(seed=0, n=2):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    prompt = "".join(rng.choice(list(PROMPT_CHARS), size=int(rng.integers(30, 45))))
    answer = "".join(rng.choice(list(ANSWER_CHARS), size=6))
    out.append(tasks_lib.TaskSample("qa", prompt, (answer,), answer, {}))
  return out


def batch_and_model(config, seed=0):
  b = qa_data.qa_batch(TOK, samples(seed), T, int(config.posttrain.answer_cap))
  return b, build_model(config.model, rngs=nnx.Rngs(0))


def naive_nll(logits, targets, mask):
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
  nll = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
  return float((nll * mask).sum() / mask.sum())


def test_batch_masks_and_answer_cap():
  b, _ = batch_and_model(tiny_config())
  for i, s in enumerate(samples()):
    p = 1 + len(s.prompt)  # bos + prompt
    assert b["prompt_len"][i] == p
    # prompt targets: positions 0 .. p-2; answer targets: the first 4 answer bytes + eos.
    np.testing.assert_array_equal(np.nonzero(b["prompt_mask"][i])[0], np.arange(p - 1))
    np.testing.assert_array_equal(np.nonzero(b["loss_mask"][i])[0], np.arange(p - 1, p + 4))
    assert TOK.decode(b["targets"][i, p - 1:p + 3]) == s.target[:4]
    assert b["targets"][i, p + 3] == TOK.eos_id


@pytest.mark.parametrize("mode", ["nested_refine", "nested_sft"])
def test_inner_loss_sees_prompt_tokens_only(mode):
  config = tiny_config(mode)
  b, model = batch_and_model(config)
  inner = posttrain.inner_loss_fn(config, TOK.pad_id)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = jax.random.key(1)

  @jax.jit
  def loss_and_grad(batch):
    f = lambda p: inner(nnx.merge(graphdef, p, rest), batch, rng)
    return jax.value_and_grad(f, has_aux=True)(params)

  (l1, _), g1 = loss_and_grad(b)
  # Other answer tokens (inputs and targets): the inner loss and its gradient are unchanged.
  b2 = {k: np.array(v) for k, v in b.items()}
  ans = b2["loss_mask"] > 0
  b2["targets"][ans] = (b2["targets"][ans] + 7) % 250
  for i, p in enumerate(b2["prompt_len"]):
    b2["inputs"][i, p:] = (b2["inputs"][i, p:] + 11) % 250
  (l2, _), g2 = loss_and_grad(b2)
  assert float(l1) == float(l2)
  jax.tree.map(np.testing.assert_array_equal, g1, g2)
  if mode == "nested_refine":
    return  # rollouts feed the model's own sampled tokens (digits too): rows get gradient
  # No gradient reaches the embedding rows of answer-only tokens.
  emb = [np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(g1)
         if "embed" in jax.tree_util.keystr(path)]
  assert len(emb) == 1
  answer_ids = TOK.encode(ANSWER_CHARS) + [TOK.eos_id]
  assert np.abs(emb[0][answer_ids]).max() == 0.0
  assert np.abs(emb[0][TOK.encode(PROMPT_CHARS[:5])]).max() > 0.0
  if mode == "nested_sft":  # and it is exactly NTP on the prompt positions
    logits = model(jnp.asarray(b["inputs"])).logits
    want = naive_nll(logits, b["targets"], b["prompt_mask"])
    np.testing.assert_allclose(float(l1), want, rtol=1e-5)


def test_outer_loss_sees_answer_tokens_only():
  config = tiny_config()
  b, model = batch_and_model(config)
  loss, _ = posttrain.outer_loss(model, b, jax.random.key(0))
  logits = model(jnp.asarray(b["inputs"])).logits
  np.testing.assert_allclose(float(loss), naive_nll(logits, b["targets"], b["loss_mask"]),
                             rtol=1e-5)
  b2 = {k: np.array(v) for k, v in b.items()}
  pm = b2["prompt_mask"] > 0
  b2["targets"][pm] = (b2["targets"][pm] + 5) % 250  # other prompt targets: same loss
  assert float(posttrain.outer_loss(model, b2, jax.random.key(0))[0]) == float(loss)


@pytest.mark.parametrize("mode", ["nested_sft", "sft"])
def test_step_equals_two_manual_updates(mode):
  config = tiny_config(mode, **{"posttrain.inner_lr_scale": 0.5})
  b, model = batch_and_model(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # SGD with momentum: stateful (each update must see its own trace) and linear in the
  # gradients, so rounding differences between CPUs stay at rounding size (Adam's g / |g|
  # turns a near-zero gradient's rounding into a whole lr-sized step).
  sgd = optax.sgd(1e-2, momentum=0.9)
  tx = sgd if mode == "sft" else optim.Nested(optax.chain(sgd, optax.scale(0.5)), sgd)
  opt = tx.init(params)
  rng = jax.random.key(3)
  step = posttrain.nested_step(config, TOK.pad_id)(graphdef, tx, int(config.train.microbatches))
  got_p, got_opt, out = jax.jit(step)(params, opt, rest, b, rng)

  want_p, want_lo = jax.jit(lambda: _manual(mode, graphdef, params, rest, sgd, b, rng))()
  np.testing.assert_allclose(float(out["loss"]), float(want_lo), rtol=1e-5)
  # Tolerance from the size of the update itself (per leaf), far above float32 rounding.
  jax.tree.map(lambda a, w, p: np.testing.assert_allclose(
      a - p, w - p, rtol=0, atol=1e-4 * max(np.abs(w - p).max(), 1e-12)), got_p, want_p, params)
  assert ("inner_loss" in out) == (mode != "sft")


def _manual(mode, graphdef, params, rest, sgd, b, rng):
  """Inner update (its own optimiser state, scaled 0.5) then outer update (a fresh state)."""
  r_in, r_out = jax.random.split(rng)
  p = params
  if mode != "sft":
    pb = qa_data.prompt_only(b, TOK.pad_id)
    g = jax.grad(lambda q: losses.ntp_loss(nnx.merge(graphdef, q, rest), pb, r_in)[0])(p)
    u, _ = sgd.update(g, sgd.init(p), p)
    p = optax.apply_updates(p, jax.tree.map(lambda x: 0.5 * x, u))
  ab = {"inputs": b["inputs"], "targets": b["targets"], "loss_mask": b["loss_mask"]}
  lo, g = jax.value_and_grad(
      lambda q: losses.ntp_loss(nnx.merge(graphdef, q, rest), ab, r_out)[0])(p)
  u, _ = sgd.update(g, sgd.init(p), p)
  return optax.apply_updates(p, u), lo


@pytest.mark.parametrize("mode", ["nested_sft",
                                  pytest.param("nested_refine", marks=pytest.mark.slow)])
def test_inner_lr_scale_zero_is_sft_bit_for_bit(mode):
  """With separate inner/outer AdamW states (posttrain.make_optimizer), a zero-scaled inner
  update leaves nothing behind: two steps equal plain SFT's two steps exactly."""
  def two_steps(config):
    b, model = batch_and_model(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = posttrain.make_optimizer(config)
    opt = tx.init(params)
    step = jax.jit(posttrain.nested_step(config, TOK.pad_id)(graphdef, tx, int(config.train.microbatches)))
    for i in range(2):
      params, opt, out = step(params, opt, rest, b, jax.random.key(i))
    return params, opt, out

  p_sft, opt_sft, _ = two_steps(tiny_config("sft"))
  p_nest, opt_nest, out = two_steps(tiny_config(mode, **{"posttrain.inner_lr_scale": 0.0}))
  assert float(out["inner_grad_norm"]) > 0  # the inner update really ran
  jax.tree.map(np.testing.assert_array_equal, p_nest, p_sft)
  jax.tree.map(np.testing.assert_array_equal, opt_nest["outer"], opt_sft)
  # ... and with a non-zero scale the answer update differs (the test can fail).
  p_half, _, _ = two_steps(tiny_config(mode, **{"posttrain.inner_lr_scale": 0.5}))
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p_half),
                                                 jax.tree.leaves(p_sft))) > 1e-4


def test_nested_refine_makes_ppo_epochs_x_minibatches_inner_updates():
  """refine.ppo_epochs x ppo_minibatches inner updates per step (rollouts collected once), as
  the official code does: the inner Adam count says so, the outer one counts 1, and from the
  second update on the PPO ratio moves off 1 so the clip can act. In the default run: this
  path once broke (a local name shadowed the ppo module) while TTT's twin test passed."""
  def run(**over):
    config = tiny_config("nested_refine", **over)
    b, model = batch_and_model(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = posttrain.make_optimizer(config)
    opt = tx.init(params)
    step = jax.jit(posttrain.nested_step(config, TOK.pad_id)(graphdef, tx, int(config.train.microbatches)))
    _, opt, out = step(params, opt, rest, b, jax.random.key(0))
    counts = lambda s: sorted({int(x) for x in jax.tree.leaves(s) if np.ndim(x) == 0})
    return counts(opt["inner"]), counts(opt["outer"]), out

  inner, outer, out = run(**{"train.lr": 0.05})
  assert inner == [1] and outer == [1] and float(out["inner_clip_frac"]) == 0.0
  inner, outer, out = run(**{"train.lr": 0.05, "refine.ppo_epochs": 3,
                             "refine.ppo_minibatches": 2})
  assert inner == [6] and outer == [1]
  assert float(out["inner_clip_frac"]) > 0.0


def test_load_samples_jsonl_and_parquet(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  jl = tmp_path / "pairs.jsonl"
  jl.write_text(json.dumps({"prompt": "Q: 2+2?", "answer": "4"}) + "\n\n" +
                json.dumps({"prompt": "Q: capital?", "answer": ["Paris", "paris"]}) + "\n")
  pqf = tmp_path / "qa.parquet"
  pq.write_table(pa.table({"context": ["x " * 500], "input": ["Who?"], "answers": [["Ann"]]}),
                 pqf)
  got = qa_data.load_samples(f"{jl},{pqf}", TOK, max_prompt_tokens=200)
  assert [s.answers for s in got] == [("4",), ("Paris", "paris"), ("Ann",)]
  assert got[0].prompt == "Q: 2+2?" and got[0].target == "4"
  assert len(TOK.encode(got[2].prompt)) <= 200 and "Who?" in got[2].prompt
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"question": "?"}) + "\n")
  with pytest.raises(ValueError, match=r"expected prompt \+ answer/answers .* or context \+ "
                                       r"input/question \+ answers"):
    qa_data.load_samples(str(bad), TOK)


def test_iterator_state_roundtrip():
  config = tiny_config()
  fn = lambda i: samples(seed=i, n=1)[0]
  a = qa_data.SampleIterator(fn, TOK, T, 2, 4)
  next(a)
  state = a.get_state()
  want = next(a)
  b = qa_data.SampleIterator(fn, TOK, T, 2, 4)
  b.set_state(json.loads(json.dumps(state)))
  jax.tree.map(np.testing.assert_array_equal, next(b), want)
  del config


def _pairs_file(tmp_path):
  path = tmp_path / "pairs.jsonl"
  with open(path, "w") as f:
    for s in samples(seed=5, n=24):
      f.write(json.dumps({"prompt": s.prompt, "answer": s.target}) + "\n")
  return str(path)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: (r["loss"], r.get("inner_loss")) for r in map(json.loads, f)}


@pytest.mark.parametrize("mode", ["nested_sft",
                                  pytest.param("nested_refine", marks=pytest.mark.slow)])
def test_run_resume_equals_uninterrupted(tmp_path, mode):
  """posttrain run: 4 steps straight == 2 steps, then the same command with steps=4."""
  data = _pairs_file(tmp_path)
  over = {"posttrain.data_path": data, "train.schedule": "constant"}
  full, half = str(tmp_path / "full"), str(tmp_path / "half")
  posttrain.run(tiny_config(mode, **over), full)
  posttrain.run(tiny_config(mode, **over, **{"train.steps": 2}), half)
  posttrain.run(tiny_config(mode, **over), half)
  a, b = _losses(full), _losses(half)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for s in (3, 4):
    np.testing.assert_allclose(b[s], a[s], rtol=1e-5)
  with open(os.path.join(full, "eval", "results.json")) as f:
    assert set(json.load(f)) == {"qa"}
  assert os.path.exists(os.path.join(full, "eval", "no_adaptation", "results.json"))
  summary = json.load(open(os.path.join(full, "posttrain_summary.json")))
  # Teacher-forced answer scores of the initial weights and of the step-4 checkpoint on the
  # held-out answer batches, recomputed with a float64 log-softmax and a plain argmax.
  import refine_jax  # pylint: disable=g-import-not-at-top
  from conftest import naive_nll  # pylint: disable=g-import-not-at-top
  config = tiny_config(mode, **over)
  batches = posttrain.held_out_batches(config, TOK, posttrain._samples_fn(config, TOK, "eval")[1])  # pylint: disable=protected-access
  models = {"before": build_model(config.model, rngs=nnx.Rngs(int(config.seed))),
            "after": refine_jax.load_pretrained(os.path.join(full, "checkpoints", "4"))[0]}
  for when, model in models.items():
    nll_sum, tokens, correct = map(sum, zip(*(naive_nll(model, b) for b in batches)))
    assert tokens > 0
    assert summary[when]["answer_nll"] == pytest.approx(nll_sum / tokens, rel=1e-4), when
    assert summary[when]["answer_token_acc"] == pytest.approx(correct / tokens, abs=1e-6), when
  assert summary["after"]["answer_nll"] != summary["before"]["answer_nll"]  # 4 steps trained
  assert summary["mode"] == mode and summary["steps"] == 4
  if mode == "nested_refine":
    assert a[4][1] is not None and b[4][1] is not None  # the inner ReFINE loss was logged


def test_bad_mode_is_one_clear_error():
  with pytest.raises(ValueError, match="posttrain.mode"):
    posttrain.validate(tiny_config("maml"))
