"""Mid-training stage: ReFINE (GRPO on next-sequence prediction + NTP) on long text.

  python -m refine_jax.main --config=configs/midtrain.py [--workdir=runs/midtrain-deltanet]

Without `init_checkpoint` (a fresh machine) it first runs a short NTP warm-up in
<workdir>/warmup (a random model has nothing to branch from), then ReFINE from those weights in
<workdir>, then the eval suite when refine_jax.eval provides one. With `init_checkpoint` the
warm-up is skipped and ReFINE starts from those weights. Rerunning resumes whichever phase was
interrupted. Besides the loop's files, the run dir gets rollouts.jsonl (sampled rollouts vs the
truth on a fixed held-out batch, also as TensorBoard text under rollouts/) and
midtrain_summary.json (held-out NLL and greedy next-sequence match before / after ReFINE).
"""
from __future__ import annotations

import copy
import json
import math

import jax
import numpy as np
from absl import logging
from flax import nnx

from refine_jax import paths
from refine_jax.data import tokenizers
from refine_jax.eval import curves, nll, runner
from refine_jax.refine import step as refine_step
from refine_jax.train import loop, metrics as metrics_lib, ppo, update, warmup
from refine_jax.train.spec import StepSpec, lm_batch


def step_spec(config):
  """The ReFINE step: fused loss (1 update) or collect + ppo_epochs x ppo_minibatches updates."""
  rcfg = config.refine
  updates = int(rcfg.ppo_epochs) * int(rcfg.ppo_minibatches)
  make_step = (ppo.ppo_step(rcfg) if updates > 1
               else update.loss_step(refine_step.make_loss_fn(rcfg)))
  return StepSpec(make_step, updates, lm_batch(config.train.batch_size, config.data.seq_len,
                                               segments=config.data.reset_at_documents))


def minibatches(config):
  """(field, n): the minibatches each step's batch splits into (validate.py checks the split)."""
  return "refine.ppo_minibatches", int(config.refine.ppo_minibatches)


def _num(v):
  """A JSON-friendly float (None for missing / non-finite)."""
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


class RolloutLogger:
  """on_step hook: every refine.log_rollouts_every steps, rollouts on a fixed held-out batch
  -> rollouts.jsonl + TensorBoard text; also the greedy next-sequence match used in the
  summary."""

  def __init__(self, config, workdir, batch):
    self.rcfg = config.refine
    self.every = int(self.rcfg.log_rollouts_every)
    self.last_step = int(config.train.steps)
    self.path = paths.join(workdir, "rollouts.jsonl")
    self.tb_dir = paths.join(workdir, "rollouts")
    self.batch = {k: np.asarray(v)[:max(1, int(self.rcfg.num_logged_rollouts))]
                  for k, v in batch.items()}
    self.tokenizer = None
    try:
      self.tokenizer = tokenizers.get_tokenizer(config.data)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("no tokenizer for rollout text (%s); logging token ids", e)
    self._tb = None
    self._jit = None
    self.enabled = jax.process_index() == 0 and self.every > 0

  def _decode(self, ids):
    ids = [int(i) for i in ids]
    if self.tokenizer is None:
      return " ".join(map(str, ids))
    try:
      return self.tokenizer.decode(ids)
    except Exception:  # pylint: disable=broad-except
      return " ".join(map(str, ids))

  def sample(self, ms, seed):
    if self._jit is None:
      rcfg, graphdef = self.rcfg, ms.graphdef
      self._jit = jax.jit(lambda p, r, b, key: refine_step.collect(
          nnx.merge(graphdef, p, r), b, key, rcfg))
    return jax.device_get(self._jit(ms.params, ms.rest, self.batch, jax.random.key(seed)))

  def __call__(self, step, row, ms):
    if not self.enabled or not (step % self.every == 0 or step == self.last_step):
      return
    col = self.sample(ms, step)
    inputs = self.batch["inputs"]
    c, n = self.rcfg.num_chunks, self.rcfg.rollouts_per_position
    lines, md = [], [f"step {step}\n"]
    for b in range(inputs.shape[0]):
      for i in range(c):
        if not col.valid_Bc[b, i]:
          continue
        p = int(col.positions_Bc[b, i])
        g = (b * c + i) * n
        rec = {"step": int(step), "seq": b, "position": p,
               "context": self._decode(inputs[b, max(0, p - 47):p + 1]),
               "rollout": self._decode(col.tokens_Gk[g]), "truth": self._decode(col.true_Gk[g]),
               "reward": float(col.rewards_BG[b, i * n]),
               "entropy": float(col.entropy_Bc[b, i])}
        lines.append(rec)
        md.append(f"- `...{rec['context'][-40:]!r}` -> rollout `{rec['rollout']!r}` | truth "
                  f"`{rec['truth']!r}` (reward {rec['reward']:.3f})")
    paths.append_text(self.path, "".join(json.dumps(rec) + "\n" for rec in lines))
    if self._tb is None:
      self._tb = metrics_lib.summary_writer(self.tb_dir) or False
    if self._tb:
      self._tb.add_text("rollouts", "\n".join(md), int(step))
      self._tb.flush()


def next_sequence_match(model, batches, rcfg, seed=0):
  """Held-out greedy next-sequence accuracy: fraction of the k greedy rollout tokens equal to
  the truth, from the refine.num_chunks selected positions (argmax-entropy, deterministic)."""
  rc = copy.deepcopy(rcfg)
  with rc.unlocked():
    rc.temperature, rc.selection, rc.reward = 0.0, "argmax", "binary"
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda s, b: refine_step.collect(nnx.merge(graphdef, s), b, jax.random.key(seed),
                                               rc))
  scores = []
  for b in batches:
    col = jax.device_get(f(state, b))
    w = np.repeat(col.valid_Bc, rc.rollouts_per_position, axis=1)
    scores.append(float((col.rewards_BG * w).sum() / max(w.sum(), 1)))
  return float(np.mean(scores))


def _eval_suite(config, model, workdir):
  """The eval suite (refine_jax.eval) on the final model, written to <workdir>/eval."""
  return runner.eval_stage(config, workdir, model)


def validate(config):
  """One clear error per bad refine.* / midtrain.* value (validate_config calls it)."""
  rcfg = config.refine
  refine_step.validate(rcfg, int(config.data.seq_len))
  if rcfg.kl_coef > 0:
    raise ValueError(f"refine.kl_coef={rcfg.kl_coef}: the midtrain stage has no frozen "
                     "reference model yet (the paper uses none); set refine.kl_coef=0, or call "
                     "refine.make_loss_fn(rcfg, ref_model=...) from your own stage.")


def run(config, workdir):
  validate(config)
  rcfg = config.refine
  workdir = paths.norm(workdir)
  paths.makedirs(workdir)
  mt = config.midtrain

  eval_batches = loop.default_eval_batches(config, max(1, int(config.train.eval_batches)))
  summary = {}
  if not config.init_checkpoint and mt.warmup_steps > 0:
    wdir = paths.join(workdir, "warmup")
    if not warmup.has_checkpoint(workdir):  # a resumed run already has its warm-up behind it
      warm = warmup.ntp_warmup(config, workdir, steps=mt.warmup_steps, lr=mt.warmup_lr,
                               stage="midtrain", eval_batches=eval_batches)
      summary["warmup"] = {"steps": warm.step, "loss": warm.metrics.get("loss"),
                           "eval_loss": warm.eval_metrics.get("eval_loss")}
      if mt.summary_eval:
        summary["next_sequence_match_before"] = next_sequence_match(warm.model, eval_batches,
                                                                    rcfg)
    # Also on resume, so config.json stays the same resolved config.
    config = copy.deepcopy(config)
    with config.unlocked():
      config.init_checkpoint = wdir

  logger = RolloutLogger(config, workdir, eval_batches[0])
  first = {}

  def on_step(step, row, ms):
    if not first:
      first.update({k: _num(row.get(k)) for k in ("reward_mean", "ntp_loss", "loss")},
                   step=step)
    logger(step, row, ms)

  spec = step_spec(config)
  result = loop.run_training(config, workdir, spec, eval_fn=nll.ntp_eval,
                             eval_batches=eval_batches, on_step=on_step, stage="midtrain")
  m = result.metrics
  if not m:  # a rerun of a finished run: nothing trained, keep the earlier summary
    print(f"midtrain: {workdir} is already at step {result.step}; nothing to do")
    return result
  summary["refine"] = {
      "steps": result.step, "first_logged": first,
      "last": {k: _num(m.get(k)) for k in ("reward_mean", "reward_std", "ntp_loss", "rl_loss",
                                     "clip_frac", "entropy_selected", "step_time_s")},
      "eval_loss": result.eval_metrics.get("eval_loss"),
      "eval_ppl": result.eval_metrics.get("eval_ppl")}
  if mt.summary_eval:
    summary["next_sequence_match"] = next_sequence_match(result.model, eval_batches, rcfg)
  if mt.run_eval:
    _eval_suite(config, result.model, workdir)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, "midtrain_summary.json"),
                     json.dumps(summary, indent=2, default=_num))
    curves.write_training_curves(workdir)  # now with next-sequence match before / after
  last = summary["refine"]["last"]
  print(f"midtrain done: step {result.step}, reward_mean {last['reward_mean']}, ntp_loss "
        f"{last['ntp_loss']}, eval_ppl {summary['refine']['eval_ppl']}, run dir {workdir}")
  return result
