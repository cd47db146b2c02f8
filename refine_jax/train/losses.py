"""Next-token prediction loss (the pretrain stage's loss_fn); held-out NLL sums are eval's
(eval/nll.py)."""

import jax.numpy as jnp

from refine_jax.eval.nll import loss_mask
from refine_jax.refine.step import ntp_loss as _ntp_from_logits


def ntp_loss(model, batch, rng):
  """Mean next-token cross-entropy over loss_mask positions (mask zeroes document boundaries
  and padding). Returns (loss, metrics)."""
  del rng
  logits_BTV = model(batch["inputs"]).logits
  mask_BT = loss_mask(batch)
  tokens = mask_BT.sum()
  loss = _ntp_from_logits(logits_BTV, batch["targets"], mask_BT)
  correct = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  accuracy = (correct * mask_BT).sum() / jnp.maximum(tokens, 1.0)
  return loss, {"ntp_loss": loss, "accuracy": accuracy, "loss_tokens": tokens}
