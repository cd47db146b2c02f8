"""Held-out next-token NLL sums (perplexity) and the loss mask they share with training.

Eval owns these so it never imports train (train.losses builds the training loss on them).
"""

import jax.numpy as jnp

from refine_jax.refine.step import token_nll


def loss_mask(batch):
  """float32 [B, T] loss_mask of an LM batch (all ones when the batch has none)."""
  if "loss_mask" in batch:
    return batch["loss_mask"].astype(jnp.float32)
  return jnp.ones(batch["targets"].shape, jnp.float32)


def ntp_eval(model, batch):
  """Sums for held-out perplexity: {"nll_sum", "tokens", "correct"}."""
  logits_BTV = model(batch["inputs"]).logits
  mask_BT = loss_mask(batch)
  nll_BT = token_nll(logits_BTV, batch["targets"])
  correct = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  return {"nll_sum": (nll_BT * mask_BT).sum(), "tokens": mask_BT.sum(),
          "correct": (correct * mask_BT).sum()}
