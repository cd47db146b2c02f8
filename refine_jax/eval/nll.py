"""Held-out next-token NLL sums (perplexity).

Eval owns these so it never imports train; the token NLL and the loss mask are
refine_jax.losses' (the training losses use the same ones)."""

import jax.numpy as jnp

from refine_jax.losses import forward, loss_mask, segments, token_nll

__all__ = ["loss_mask", "ntp_eval", "token_nll"]


def ntp_eval(model, batch):
  """Sums for held-out perplexity: {"nll_sum", "tokens", "correct"}. Packed documents are
  scored apart (segment_ids), as training sees them."""
  logits_BTV = forward(model, batch["inputs"], segments(batch)).logits
  mask_BT = loss_mask(batch)
  nll_BT = token_nll(logits_BTV, batch["targets"])
  correct = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  return {"nll_sum": (nll_BT * mask_BT).sum(), "tokens": mask_BT.sum(),
          "correct": (correct * mask_BT).sum()}
