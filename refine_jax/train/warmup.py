"""The short NTP warm-up that midtrain, posttrain and ttt run in <workdir>/warmup when they
have no init_checkpoint (a fresh machine), so their embedded defaults start from a model
that already knows the byte statistics."""

import copy

from refine_jax import paths
from refine_jax.eval import nll
from refine_jax.train import loop, losses, update


def has_checkpoint(workdir) -> bool:
  """True when <workdir>/checkpoints holds a saved step (the stage itself has started)."""
  return any(name.isdigit() for name in paths.listdir(paths.join(workdir, "checkpoints")))


def ntp_warmup(config, workdir, *, steps, lr, stage, schedule=None, eval_batches=None):
  """Trains `steps` NTP steps at peak `lr` in <workdir>/warmup (resuming it if present).

  schedule: train.schedule for the warm-up (None keeps the stage's). Returns the loop's
  TrainResult; its `workdir` is what the stage passes on as init_checkpoint."""
  wdir = paths.join(workdir, "warmup")
  wc = copy.deepcopy(config)
  with wc.unlocked():
    wc.stage = "pretrain"
    wc.train.steps = int(steps)
    wc.train.lr = float(lr)
    wc.train.warmup_steps = max(1, int(steps) // 10)
    wc.train.eval_every = int(steps)
    if schedule is not None:
      wc.train.schedule = schedule
  print(f"{stage}: no init_checkpoint -> NTP warm-up ({steps} steps) in {wdir}")
  return loop.run_training(wc, wdir, update.loss_spec(losses.ntp_loss), eval_fn=nll.ntp_eval,
                           eval_batches=eval_batches, stage=f"{stage}-warmup")
