"""The next-token objective of the NTP stages (pretrain, warm-ups, SFT, post-training's answer
update): a refine_jax.losses.Objective, so microbatches and minibatches never change it."""

from refine_jax import losses


def _terms(model, batch, rng):
  del rng
  logits_BTV = losses.forward(model, batch["inputs"], losses.segments(batch)).logits
  mask_BT = losses.loss_mask(batch)
  nll, correct = losses.ntp_terms(logits_BTV, batch["targets"], mask_BT)
  return {"ntp_loss": nll}, {"accuracy": correct, "loss_tokens": correct.weight}


def _weights(batch):
  return {"ntp_loss": losses.loss_mask(batch).sum()}


# Mean next-token cross-entropy over loss_mask positions (the mask zeroes document boundaries
# and padding); called on a whole batch it returns (loss, metrics).
ntp_loss = losses.Objective(_terms, {"ntp_loss": 1.0}, _weights)
