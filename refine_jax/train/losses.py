"""Next-token prediction loss and held-out NLL sums (the pretrain stage's loss_fn)."""

import jax.numpy as jnp

from refine_jax.refine.step import ntp_loss as _ntp_from_logits
from refine_jax.refine.step import token_nll


def _mask(batch):
  if "loss_mask" in batch:
    return batch["loss_mask"].astype(jnp.float32)
  return jnp.ones(batch["targets"].shape, jnp.float32)


def ntp_loss(model, batch, rng):
  """Mean next-token cross-entropy over loss_mask positions (mask zeroes document boundaries
  and padding). Returns (loss, metrics)."""
  del rng
  logits_BTV = model(batch["inputs"]).logits
  mask_BT = _mask(batch)
  tokens = mask_BT.sum()
  loss = _ntp_from_logits(logits_BTV, batch["targets"], mask_BT)
  correct = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  accuracy = (correct * mask_BT).sum() / jnp.maximum(tokens, 1.0)
  return loss, {"ntp_loss": loss, "accuracy": accuracy, "loss_tokens": tokens}


def ntp_eval(model, batch):
  """Sums for held-out perplexity: {"nll_sum", "tokens", "correct"}."""
  logits_BTV = model(batch["inputs"]).logits
  mask_BT = _mask(batch)
  nll_BT = token_nll(logits_BTV, batch["targets"])
  correct = (jnp.argmax(logits_BTV, -1) == batch["targets"]).astype(jnp.float32)
  return {"nll_sum": (nll_BT * mask_BT).sum(), "tokens": mask_BT.sum(),
          "correct": (correct * mask_BT).sum()}
