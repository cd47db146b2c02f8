"""Test-time training (WORKSPACE.md, Design in brief): ReFINE on the unlabeled test prompts, then answer.

  python -m refine_jax.main --config=configs/ttt.py [--workdir=runs/ttt-deltanet]

For each test batch: copy the weights, take ttt.steps updates on the prompts only ("refine":
NTP + GRPO with the "binary" reward, lambda_rl 0.4; "sft": NTP only, the baseline), answer
greedily with the cached decoder, score, discard the copy. ttt.carry_over=True keeps the
adapted weights for the next batch instead (the reference code's behaviour).

Library use (the caller's model is never modified):
  adapt(model, config, prompt_ids, steps) -> new model
  answer_with_ttt(model, config, prompts, tokenizer=...) -> answers
The updates are a deterministic function of (weights, prompt tokens, config.seed): the RNG is
derived from the prompt tokens, so a batch's answers do not depend on which batches ran
before it (with carry_over off), and a rerun gives the same answers.

The stage writes eval/no_adaptation/ (the same checkpoint, no TTT), eval/results.json (with
TTT) and eval/comparison.md. Progress is resumable per batch: each finished batch's answers
are appended to eval/ttt_progress.jsonl and a rerun skips them. With carry_over the adapted
weights of an interrupted run are not saved, so the progress file is ignored and it restarts.
"""
from __future__ import annotations

import json
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from refine_jax import paths
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import decode
from refine_jax.refine import step as refine_step
from refine_jax.train import loop, losses, optim, ppo, qa_data, qa_eval, update, warmup
from refine_jax.train.spec import StepSpec, lm_batch

MODES = ("refine", "sft")
_STEPS: dict = {}  # (graphdef, config key) -> jitted update


def resolve_config(config):
  """`config` ready for adapt(): a config of another stage (e.g. what load_pretrained
  returns) gets the paper's TTT refine.* (binary reward, lambda_rl 0.4)."""
  if config.stage == "ttt":
    return config
  c = ml_collections.ConfigDict(config.to_dict())
  c.refine.reward, c.refine.lambda_rl = "binary", 0.4
  return c


def validate(config):
  t = config.ttt
  if t.mode not in MODES:
    raise ValueError(f"ttt.mode={t.mode!r}; choose one of {MODES}.")
  if int(t.steps) < 0:
    raise ValueError(f"ttt.steps={t.steps} must be >= 0.")
  if int(t.batch_size) < 1:
    raise ValueError(f"ttt.batch_size={t.batch_size} must be >= 1.")
  if not float(t.lr) > 0:
    raise ValueError(f"ttt.lr={t.lr} must be > 0.")
  if t.mode == "refine":
    refine_step.validate(config.refine, int(config.data.seq_len))
    update.check_split(t.batch_size, minibatches=int(config.refine.ppo_minibatches),
                       field="ttt.batch_size")


def prompt_batch(prompt_ids: Sequence[Sequence[int]], bucket: int, pad_id: int):
  """Right-padded NTP batch of the prompts, T = the longest prompt - 1 rounded up to `bucket`
  (few compiled shapes): inputs, targets, loss_mask (1 on real prompt targets), lengths."""
  lens = [len(p) for p in prompt_ids]
  if min(lens) < 2:
    raise ValueError("every TTT prompt needs >= 2 tokens (one input, one target).")
  T = -(-(max(lens) - 1) // bucket) * bucket
  b = len(prompt_ids)
  out = {"inputs": np.full((b, T), pad_id, np.int32), "targets": np.full((b, T), pad_id, np.int32),
         "loss_mask": np.zeros((b, T), np.float32),
         "lengths": np.asarray(lens, np.int32) - 1}  # ReFINE chunks each prompt's own length
  for i, ids in enumerate(prompt_ids):
    ids = np.asarray(ids, np.int32)
    out["inputs"][i, :len(ids) - 1] = ids[:-1]
    out["targets"][i, :len(ids) - 1] = ids[1:]
    out["loss_mask"][i, :len(ids) - 1] = 1.0
  return out


def _loss_fn(config):
  if config.ttt.mode == "sft":
    return losses.ntp_loss
  return refine_step.make_loss_fn(config.refine)


def _optimizer(config):
  """The fresh per-batch AdamW (optim.adamw, as training's): ttt.lr / weight_decay /
  grad_clip, the betas, eps and decay mask of config.train."""
  t, tc = config.ttt, config.train
  return optim.adamw(float(t.lr), b1=tc.b1, b2=tc.b2, eps=tc.eps,
                     weight_decay=float(t.weight_decay), grad_clip=float(t.grad_clip),
                     decay_all=bool(tc.decay_all))


def _ppo_updates(config):
  if config.ttt.mode != "refine":
    return 1
  return int(config.refine.ppo_epochs) * int(config.refine.ppo_minibatches)


def adapt_step(config):
  """make_step (spec.StepSpec) of one TTT step on a prompt batch with `tx` (the fresh per-batch
  optimiser, _optimizer(config)). In refine mode with refine.ppo_epochs x ppo_minibatches > 1
  the step collects rollouts once and makes that many clipped PPO updates (as mid-training)."""
  if _ppo_updates(config) > 1:
    return ppo.ppo_step(config.refine)
  return update.loss_step(_loss_fn(config))


def step_spec(config):
  """The adaptation step on a ttt.batch_size x data.seq_len prompt batch (for the AOT check)."""
  config = resolve_config(config)
  return StepSpec(adapt_step(config), 1,
                  lm_batch(config.ttt.batch_size, config.data.seq_len, segments=False),
                  _optimizer(config))


def _update_fn(graphdef, config):
  """Jitted step(params, opt_state, rest, batch, rng), cached per model structure + config."""
  t = config.ttt
  key = (graphdef, t.mode, float(t.lr), float(t.weight_decay), float(t.grad_clip),
         config.refine.to_json(sort_keys=True), config.train.to_json(sort_keys=True))
  if key not in _STEPS:
    tx = _optimizer(config)
    _STEPS[key] = (jax.jit(adapt_step(config)(graphdef, tx)), tx)
  return _STEPS[key]


def _prompt_key(prompt_ids, seed: int):
  """RNG from the prompt tokens: the same batch adapts the same way wherever it comes."""
  h = zlib.crc32(b"".join(np.asarray(p, np.int32).tobytes() + b"|" for p in prompt_ids))
  return jax.random.fold_in(jax.random.key(int(seed)), h & 0x7FFFFFFF)


def adapt(model, config, prompt_ids, steps: int | None = None, *, return_metrics=False):
  """A new model: a copy of `model` after `steps` (default ttt.steps) TTT updates on the
  prompt(s). prompt_ids: one list of token ids or a list of them. `model` is untouched."""
  config = resolve_config(config)
  validate(config)
  if len(prompt_ids) and np.ndim(prompt_ids[0]) == 0:
    prompt_ids = [prompt_ids]
  steps = int(config.ttt.steps if steps is None else steps)
  chunk = int(config.model.chunk_size)
  bucket = max(int(config.ttt.bucket), chunk)
  bucket = -(-bucket // chunk) * chunk
  pad = int(config.ttt.pad_id)
  if pad < 0:
    pad = get_tokenizer(config.data).pad_id
  batch = prompt_batch(prompt_ids, bucket, pad)
  if config.ttt.mode == "refine":
    refine_step.validate(config.refine, batch["inputs"].shape[1])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(jnp.copy, params)  # the caller's arrays are never donated or reused
  step, tx = _update_fn(graphdef, config)
  opt_state = tx.init(params)
  key = _prompt_key(prompt_ids, config.seed)
  rows = []
  for s in range(steps):
    params, opt_state, m = step(params, opt_state, rest, batch, jax.random.fold_in(key, s))
    rows.append({k: float(v) for k, v in jax.device_get(m).items()})
  new = nnx.merge(graphdef, params, rest)
  return (new, rows) if return_metrics else new


class Session:
  """Answers batches of text prompts with TTT; holds the carried weights when carry_over."""

  def __init__(self, model, config, tokenizer):
    self.model, self.config, self.tok = model, config, tokenizer
    self.carry = bool(config.ttt.carry_over)
    self.metrics: list = []
    self.last_adapted = None

  def answer(self, prompts: Sequence[str], max_new_tokens) -> list[str]:
    """Greedy answers after test-time training on the prompts; max_new_tokens: one int or one
    per prompt."""
    bos = [self.tok.bos_id] if bool(self.config.data.add_bos) else []
    ids = [bos + self.tok.encode(p) for p in prompts]
    adapted, rows = adapt(self.model, self.config, ids, return_metrics=True)
    self.last_adapted = adapted
    if rows:
      self.metrics.append({"first": rows[0], "last": rows[-1]})
    new = decode.greedy_decode(adapted, ids, max_new_tokens=max_new_tokens,
                               eos_id=self.tok.eos_id, batch_size=len(ids))
    if self.carry:
      self.model = adapted
    return [self.tok.decode(n) for n in new]


def answer_with_ttt(model, config, prompts: Sequence[str], *, tokenizer=None,
                    max_new_tokens: int = 32) -> list[str]:
  """Greedy answers to `prompts`, each batch of ttt.batch_size answered by a TTT copy."""
  if tokenizer is None:
    tokenizer = get_tokenizer(config.data)
  session, bs, out = Session(model, config, tokenizer), int(config.ttt.batch_size), []
  for i in range(0, len(prompts), bs):
    out += session.answer(prompts[i:i + bs], max_new_tokens)
  return out


# ----------------------------------------------------------------------------- stage


class _Progress:
  """eval/ttt_progress.jsonl: answers of finished batches, keyed by cell and batch index."""

  def __init__(self, path, enabled):
    self.path, self.done = path, {}
    if enabled and paths.exists(path):
      for line in paths.read_text(path).splitlines():
        if line.strip():
          rec = json.loads(line)
          self.done[rec["key"]] = rec
    elif paths.exists(path):
      paths.remove(path)

  def add(self, key, answers, metrics):
    self.done[key] = {"key": key, "answers": answers, "metrics": metrics}
    paths.append_text(self.path, json.dumps(self.done[key]) + "\n")


def run(config, workdir):
  validate(config)
  workdir = paths.norm(workdir)
  eval_dir = paths.join(workdir, "eval")
  paths.makedirs(eval_dir)
  t = config.ttt
  tok = get_tokenizer(config.data)
  loop.write_config(config, workdir)
  start_from = config.init_checkpoint
  if not start_from and int(t.warmup_steps) > 0:
    start_from = warmup.ntp_warmup(config, workdir, steps=t.warmup_steps, lr=t.warmup_lr,
                                   stage="ttt", schedule="cosine").workdir
  held = None
  if t.data_path:
    held = qa_data.load_samples(t.data_path, tok, max_prompt_tokens=int(config.data.seq_len),
                                limit=int(t.max_samples) or None)
  cells = qa_eval.eval_cells(config, tok, held)
  base = qa_eval.no_adaptation(config, paths.join(eval_dir, "no_adaptation"), cells, tok,
                                 None, start_from, "no adaptation")
  model = qa_eval.load_model(config, start_from)
  session = Session(model, config, tok)
  progress = _Progress(paths.join(eval_dir, "ttt_progress.jsonl"), not session.carry)
  bs = int(t.batch_size)
  tag = zlib.crc32((t.to_json(sort_keys=True) + config.refine.to_json(sort_keys=True) +
                    str(start_from)).encode())  # stale answers of another setup never match

  cell_of = {id(samples): key for key, samples in cells.items()}

  def predict(samples, budgets):
    task, length = cell_of[id(samples)]
    out = []
    for j in range(0, len(samples), bs):
      key = f"{task}|{length}|{j // bs}|{tag:08x}"
      if key not in progress.done:
        n = len(session.metrics)
        progress.add(key, session.answer([s.prompt for s in samples[j:j + bs]],
                                          budgets[j:j + bs]),
                     session.metrics[n:])
      out += progress.done[key]["answers"]
    return out

  name = f"{t.mode}-ttt ({t.steps} steps{', carry-over' if session.carry else ''})"
  res = qa_eval.score_cells(cells, predict, tok, config, eval_dir, name)
  table = qa_eval.comparison({"no adaptation": base["results"], name: res})
  summary = {"mode": t.mode, "steps": int(t.steps), "carry_over": session.carry,
             "init_checkpoint": start_from, "no_adaptation": base["results"], "ttt": res}
  if jax.process_index() == 0:
    paths.write_text(paths.join(eval_dir, "comparison.md"),
                     f"# test-time training vs the same checkpoint without it\n\n{table}")
    paths.write_text(paths.join(workdir, "ttt_summary.json"),
                     json.dumps(summary, indent=2, default=str))
  print(f"ttt done ({name}), run dir {workdir}\n{table}")
  return summary
