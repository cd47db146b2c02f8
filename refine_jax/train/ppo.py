"""The PPO update of ReFINE (refine.ppo_epochs x ppo_minibatches > 1): collect rollouts once with
the current weights, then several clipped-PPO updates (update.updates). Every ReFINE stage
builds it from here: midtrain's step, posttrain's inner update and TTT's adaptation."""

import jax
from flax import nnx

from refine_jax import losses
from refine_jax.refine import step as refine_step
from refine_jax.train import update


_ROW_FIELDS = ("tokens_Gk", "true_Gk", "old_logp_Gk")  # Collected fields with G rows per sequence


def _by_sequence(col, G):
  """Collected with [B*G, k] row fields viewed as [B, G, k]: every leaf then has one entry per
  sequence on axis 0, so minibatches and microbatches are plain row splits of it."""
  return col._replace(**{f: getattr(col, f).reshape(-1, G, *getattr(col, f).shape[1:])
                         for f in _ROW_FIELDS})


def _by_row(col):
  return col._replace(**{f: getattr(col, f).reshape(-1, *getattr(col, f).shape[2:])
                         for f in _ROW_FIELDS})


def ppo_step(rcfg):
  """make_step (spec.StepSpec) when ppo_epochs * ppo_minibatches > 1: collect rollouts once
  with the current weights, then several clipped-PPO updates over sequence minibatches (a
  lax.scan over updates; minibatch j = sequences j, j + mbs, ... so it spans every device).
  run_training gets updates_per_step = epochs * minibatches, so the lr follows train steps.
  Every update's loss is the whole ReFINE loss on its minibatch, lambda_rl * GRPO + lambda_ntp
  * NTP (as the official code's per-minibatch loss): with E epochs the NTP term is applied E
  times per sequence, like any E-epoch pass (tests/test_train_microbatch.py checks it).
  The collect pass runs in ppo_minibatches * microbatches parts (the size of an update's
  microbatch: its captured states are the largest ReFINE buffer, so collecting never holds
  more sequences at once than an update does); microbatches > 1: each update accumulates its
  minibatch's grads over microbatches (update.accumulate); every update's terms are divided
  by their weight in its whole minibatch (refine_jax.losses)."""
  epochs, mbs = int(rcfg.ppo_epochs), int(rcfg.ppo_minibatches)
  G = int(rcfg.num_chunks) * int(rcfg.rollouts_per_position)

  def make_step(graphdef, tx, microbatches=1):
    M = int(microbatches)

    def collect(params, rest, batch, rng):
      """Collected for the whole batch, per-sequence layout (_by_sequence). Rows draw with
      their own keys (refine.step), so the parts give the whole batch's rollouts."""
      def one(mb):
        col = refine_step.collect(nnx.merge(graphdef, params, rest), mb, rng, rcfg)
        return _by_sequence(col, G)

      parts = M * mbs
      if parts == 1:
        return one(batch)
      # lax.map: rollouts of one update-microbatch of sequences at a time, one compiled body.
      return update.merge_microbatches(jax.lax.map(one, update.split_microbatches(batch, parts)))

    policy = losses.on_view(refine_step.policy_objective(rcfg),
                            lambda sub: (sub[0], _by_row(sub[1])))

    def step(params, opt_state, rest, batch, rng):
      update.check_split(batch["inputs"].shape[0], minibatches=mbs, microbatches=M)
      batch = update.with_row_ids(batch)
      col = collect(params, rest, batch, rng)
      # PPO updates over strided (sequence, rollouts) minibatches: every one spans every device.
      return update.updates(update.model_grad(graphdef, policy, rest), tx, params, opt_state,
                          (batch, col), rng=rng, epochs=epochs, minibatches=mbs, microbatches=M)

    return step

  return make_step
