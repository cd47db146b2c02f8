"""Post-training stage (WORKSPACE.md, Design in brief): nested ReFINE + SFT on prompt/answer pairs.

  python -m refine_jax.main --config=configs/posttrain.py [--workdir=runs/posttrain-deltanet]

Per batch, two optimiser updates inside ONE jitted train step (`nested_step`):
  inner  on the prompt only (answer tokens replaced by padding, loss_mask = prompt_mask):
         ReFINE (NTP + GRPO, "hybrid" reward)       posttrain.mode = "nested_refine" (default)
         NTP                                         posttrain.mode = "nested_sft"
         none                                        posttrain.mode = "sft" (plain SFT baseline)
  outer  SFT: NTP on the first posttrain.answer_cap answer tokens (+ eos), from the weights
         the inner update produced (first-order: no gradient through the inner update).
The inner and outer updates have separate AdamW states (optim.Nested), so
posttrain.inner_lr_scale (which scales the inner steps) = 0 is exactly SFT; nested ReFINE
makes refine.ppo_epochs x ppo_minibatches inner updates (rollouts collected once). The lr
schedule counts train steps, not updates. Checkpoints, resume (the QA iterator's
position is saved with them), metrics and held-out answer NLL come from the training loop.

Without init_checkpoint it first runs an NTP warm-up on the embedded corpus in
<workdir>/warmup (a random model cannot answer anything). The held-out accuracy of the
starting weights goes to eval/no_adaptation/, the post-trained one to eval/results.json, and
eval/comparison.md + posttrain_summary.json put them side by side.
"""
from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from refine_jax import losses, paths
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.refine import step as refine_step
from refine_jax.eval import nll
from refine_jax.train import loop, optim, ppo, qa_data, qa_eval, update, warmup
from refine_jax.train import losses as train_losses
from refine_jax.train.spec import StepSpec, lm_batch

MODES = ("nested_refine", "nested_sft", "sft")


def validate(config):
  """One clear error per bad posttrain.* field."""
  p = config.posttrain
  if p.mode not in MODES:
    raise ValueError(f"posttrain.mode={p.mode!r}; choose one of {MODES}.")
  if int(p.answer_cap) < 1:
    raise ValueError(f"posttrain.answer_cap={p.answer_cap} must be >= 1.")
  if not p.data_path:
    top = int(config.data.seq_len) - int(p.answer_cap) - 2
    if not int(p.min_prompt_tokens) <= top:
      raise ValueError(f"posttrain.min_prompt_tokens={p.min_prompt_tokens} > data.seq_len - "
                       f"posttrain.answer_cap - 2 = {top}; lower it or raise data.seq_len.")
  if p.mode == "nested_refine":
    refine_step.validate(config.refine, int(config.data.seq_len))


def minibatches(config):
  """(field, n): the minibatches each step's batch splits into (validate.py checks the split)."""
  return "refine.ppo_minibatches", (int(config.refine.ppo_minibatches)
                                    if inner_updates(config) > 1 else 1)


def answer_batch(batch):
  """The outer-update view: NTP only where loss_mask (the capped answer + eos) is set."""
  return {"inputs": batch["inputs"], "targets": batch["targets"],
          "loss_mask": jnp.asarray(batch["loss_mask"], jnp.float32)}


def inner_loss_fn(config, pad_id):
  """The inner update's objective, on prompt_only(batch); None for "sft"."""
  mode = config.posttrain.mode
  if mode == "sft":
    return None
  view = lambda batch: qa_data.prompt_only(batch, pad_id)
  if mode == "nested_sft":
    return losses.on_view(train_losses.ntp_loss, view)
  return losses.on_view(refine_step.objective(config.refine), view)


# The outer update: SFT on the answer tokens (a mean over ALL answer tokens of the batch).
outer_loss = losses.on_view(train_losses.ntp_loss, answer_batch)


def inner_updates(config):
  """Optimiser updates the inner (prompt) part makes per step: refine.ppo_epochs x
  ppo_minibatches for nested ReFINE (collect once, several clipped updates, as the official
  code does), 1 for nested SFT, 0 for plain SFT."""
  mode = config.posttrain.mode
  if mode == "sft":
    return 0
  if mode == "nested_sft":
    return 1
  return int(config.refine.ppo_epochs) * int(config.refine.ppo_minibatches)


def make_optimizer(config):
  """optim.Nested(inner, outer) with separate AdamW states (plain SFT: the one optimiser).
  Sharing one state would let the prompt update's gradients move the answer update through
  Adam's moments; separate, posttrain.inner_lr_scale=0 is exactly SFT. The inner one's steps
  are scaled by inner_lr_scale (its weight decay too) and its lr schedule counts its updates."""
  tc = config.train
  outer, _ = optim.make_optimizer(tc, 1)
  n = inner_updates(config)
  if n == 0:
    return outer
  inner, _ = optim.make_optimizer(tc, n)
  return optim.Nested(optax.chain(inner, optax.scale(float(config.posttrain.inner_lr_scale))),
                      outer)


def nested_step(config, pad_id):
  """make_step (spec.StepSpec): inner update(s) on the prompt, then the outer update on the
  answer; tx is make_optimizer(config). Every update accumulates its gradient over
  `microbatches` (update.accumulate)."""
  inner = inner_loss_fn(config, pad_id)
  n_inner = inner_updates(config)

  def make_step(graphdef, tx, microbatches=1):
    M = int(microbatches)
    if inner is not None and not isinstance(tx, optim.Nested):
      raise TypeError("posttrain's nested step needs posttrain.make_optimizer(config) "
                      "(separate inner and outer optimiser states).")
    inner_ppo = None
    if n_inner > 1:  # collect on the prompts once, then epochs x minibatches PPO updates
      inner_ppo = ppo.ppo_step(config.refine)(graphdef, tx.inner, M)

    def step(params, opt_state, rest, batch, rng):
      r_in, r_out = jax.random.split(rng)
      out = {}
      outer_state = opt_state
      if inner is not None:
        inner_state, outer_state = opt_state["inner"], opt_state["outer"]
        if inner_ppo is not None:
          params, inner_state, aux = inner_ppo(params, inner_state, rest,
                                         qa_data.prompt_only(batch, pad_id), r_in)
        else:
          params, inner_state, aux = update.updates(update.model_grad(graphdef, inner, rest),
                                                  tx.inner, params, inner_state, batch,
                                                  rng=r_in, microbatches=M)
        out.update({f"inner_{k}": v for k, v in aux.items()})

      outer_tx = tx.outer if inner is not None else tx
      params, outer_state, aux = update.updates(update.model_grad(graphdef, outer_loss, rest),
                                              outer_tx, params, outer_state, batch, rng=r_out,
                                              microbatches=M)
      out.update({f"answer_{k}": v for k, v in aux.items()
                  if k not in ("ntp_loss", "loss", "grad_norm")})
      out.update(loss=aux["loss"], grad_norm=aux["grad_norm"])
      if inner is not None:
        opt_state = {"inner": inner_state, "outer": outer_state}
      else:
        opt_state = outer_state
      return params, opt_state, out

    return step

  return make_step


def step_spec(config, pad_id=None):
  """Inner (prompt) + outer (answer) updates in one step; batches carry prompt masks."""
  if pad_id is None:
    pad_id = get_tokenizer(config.data).pad_id
  batch = lm_batch(config.train.batch_size, config.data.seq_len, "prompt_mask", segments=False)
  batch["prompt_len"] = ((int(config.train.batch_size),), np.int32)
  return StepSpec(nested_step(config, pad_id),
                  1 + inner_updates(config), batch, make_optimizer(config))


# ----------------------------------------------------------------------------- data


def _samples_fn(config, tok, split):
  """sample_fn(i) for the training stream (split="train") plus the held-out file samples."""
  p = config.posttrain
  seq_len, cap = int(config.data.seq_len), int(p.answer_cap)
  if p.data_path:
    rows = qa_data.load_samples(p.data_path, tok, max_prompt_tokens=seq_len - cap - 2)
    if p.eval_path:
      held = qa_data.load_samples(p.eval_path, tok, max_prompt_tokens=seq_len - cap - 2)
      train = rows
    else:
      every = int(p.holdout_every)
      held = rows[::every]
      train = [r for i, r in enumerate(rows) if i % every]
    if not train:
      raise ValueError(f"posttrain.data_path={p.data_path!r}: no training rows left after "
                       f"holding out every {p.holdout_every}th; set posttrain.eval_path.")
    held = held[:int(config.eval.num_samples)]

    def from_file(i, n=len(train)):
      epoch, j = divmod(i, n)
      perm = np.random.default_rng([int(config.data.shuffle_seed), epoch]).permutation(n)
      return train[perm[j]]
    return from_file, held
  tasks = qa_data.split_list(p.tasks)
  hi = seq_len - cap - 2
  return (lambda i: qa_data.synthetic_sample(
      tok, split, i, tasks=tasks, min_tokens=int(p.min_prompt_tokens), max_tokens=hi,
      base_seed=int(config.seed), num_needles=int(config.eval.num_needles),
      vt_hops=int(config.eval.vt_hops))), None


def make_iterator(config, tok):
  fn, _ = _samples_fn(config, tok, "train")
  return qa_data.SampleIterator(fn, tok, int(config.data.seq_len), int(config.train.batch_size),
                                int(config.posttrain.answer_cap), bool(config.data.add_bos))


def held_out_batches(config, tok, held):
  """Answer-NLL batches for the loop's eval (the eval stream, offset past the accuracy cells)."""
  bs, n = int(config.train.batch_size), max(1, int(config.train.eval_batches))
  if held:
    samples = [held[i % len(held)] for i in range(bs * n)]
  else:
    fn, _ = _samples_fn(config, tok, "eval")
    samples = [fn(100_000 + i) for i in range(bs * n)]
  return [qa_data.qa_batch(tok, samples[i * bs:(i + 1) * bs], int(config.data.seq_len),
                           int(config.posttrain.answer_cap), bool(config.data.add_bos))
          for i in range(n)]


# ----------------------------------------------------------------------------- stage


def run(config, workdir):
  validate(config)
  workdir = paths.norm(workdir)
  paths.makedirs(workdir)
  p = config.posttrain
  tok = get_tokenizer(config.data)
  if not config.init_checkpoint and int(p.warmup_steps) > 0:
    wdir = paths.join(workdir, "warmup")
    if not warmup.has_checkpoint(workdir):  # (once post-training has a checkpoint it resumes that)
      warmup.ntp_warmup(config, workdir, steps=p.warmup_steps, lr=p.warmup_lr,
                        stage="posttrain", schedule="cosine")
    config = copy.deepcopy(config)
    with config.unlocked():
      config.init_checkpoint = wdir
  start_from = config.init_checkpoint

  _, held = _samples_fn(config, tok, "eval")
  nll_batches = held_out_batches(config, tok, held)
  cells = qa_eval.eval_cells(config, tok, held)
  eval_dir = paths.join(workdir, "eval")
  base = qa_eval.no_adaptation(config, paths.join(eval_dir, "no_adaptation"), cells, tok,
                        nll_batches, start_from, "no adaptation")

  spec = step_spec(config, tok.pad_id)
  result = loop.run_training(config, workdir, spec, eval_fn=nll.ntp_eval,
                             train_iter=make_iterator(config, tok),
                             eval_batches=nll_batches if int(config.train.eval_every) else [],
                             stage="posttrain")
  res = qa_eval.score_cells(cells, qa_eval.greedy_predictor(result.model, tok, config), tok,
                            config, eval_dir, f"posttrain ({p.mode})")
  summary = {"mode": p.mode, "steps": result.step, "init_checkpoint": start_from,
             "no_adaptation": base["results"], "posttrain": res,
             "before": {k: base.get(k) for k in ("answer_nll", "answer_token_acc")},
             "after": qa_eval.answer_scores(result.model, nll_batches),
             "last_metrics": {k: float(v) for k, v in result.metrics.items()
                              if isinstance(v, (int, float, np.number))}}
  table = qa_eval.comparison({"no adaptation": base["results"], p.mode: res})
  if jax.process_index() == 0:
    paths.write_text(paths.join(eval_dir, "comparison.md"),
                     f"# posttrain ({p.mode}) vs the starting checkpoint\n\n{table}\n"
                     f"held-out teacher-forced answer scores: {summary['before']} -> "
                     f"{summary['after']}\n")
    paths.write_text(paths.join(workdir, "posttrain_summary.json"),
                     json.dumps(summary, indent=2, default=str))
  print(f"posttrain ({p.mode}) done: step {result.step}, run dir {workdir}\n{table}"
        f"held-out answer scores {summary['before']} -> {summary['after']}")
  return result
