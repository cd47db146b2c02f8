"""AdamW with warmup + cosine (or constant / linear) schedule, global-norm clipping,
decoupled weight decay."""

import jax
import optax

SCHEDULES = ("cosine", "constant", "linear")


def make_schedule(train_cfg):
  """lr(step): linear warmup from 0 over train.warmup_steps, then the train.schedule decay."""
  lr, steps = float(train_cfg.lr), int(train_cfg.steps)
  warmup = min(int(train_cfg.warmup_steps), steps)
  end = lr * float(train_cfg.min_lr_ratio)
  kind = train_cfg.schedule
  if kind == "constant":
    decay = optax.constant_schedule(lr)
  elif kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=end / lr if lr else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, end, max(steps - warmup, 1))
  else:
    raise ValueError(f"train.schedule={kind!r}; use one of {SCHEDULES}")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices only (not norms, biases, A_log/dt_bias vectors)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def per_update(schedule, updates_per_step):
  """The schedule as optax sees it: optax counts optimiser updates, the config counts train
  steps, so a step that makes several updates must not advance the schedule several times."""
  if updates_per_step == 1:
    return schedule
  return lambda count: schedule(count // updates_per_step)


def make_optimizer(train_cfg, updates_per_step=1):
  """(optax transformation, schedule over train steps) from `config.train`;
  updates_per_step: optimiser updates one train step makes (PPO epochs, nested updates)."""
  if int(updates_per_step) < 1:
    raise ValueError(f"updates_per_step={updates_per_step} must be >= 1")
  schedule = make_schedule(train_cfg)
  parts = []
  if train_cfg.grad_clip and train_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip)))
  parts.append(optax.adamw(per_update(schedule, int(updates_per_step)), b1=float(train_cfg.b1), b2=float(train_cfg.b2),
                           eps=float(train_cfg.eps), weight_decay=float(train_cfg.weight_decay),
                           mask=decay_mask))
  return optax.chain(*parts), schedule
