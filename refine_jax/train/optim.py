"""AdamW with warmup + cosine (or constant / linear) schedule, global-norm clipping,
decoupled weight decay."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from refine_jax.models import lm

SCHEDULES = ("cosine", "constant", "linear")
MU_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: optax keeps the param dtype


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
  """Weight decay on matrices only (not norms, biases, A_log/dt_bias vectors); a scanned
  model's stacked params have one extra leading (layer) axis that does not count."""
  def is_matrix(path, x):
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return x.ndim - int(lm.is_stacked(keys)) >= 2
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def per_update(schedule, updates_per_step):
  """The schedule as optax sees it: optax counts optimiser updates, the config counts train
  steps, so a step that makes several updates must not advance the schedule several times."""
  if updates_per_step == 1:
    return schedule
  return lambda count: schedule(count // updates_per_step)


def adamw(lr, *, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=0.0,
          mu_dtype="float32", decay_all=False):
  """THE optimiser builder: global-norm clip (grad_clip > 0), then AdamW with decoupled weight
  decay on matrices (decay_mask) or on every parameter (decay_all). lr: float or schedule."""
  if mu_dtype not in MU_DTYPES:
    raise ValueError(f"train.mu_dtype={mu_dtype!r}; use one of {tuple(MU_DTYPES)}.")
  parts = [optax.clip_by_global_norm(float(grad_clip))] if grad_clip and grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=float(b1), b2=float(b2), eps=float(eps),
                           mu_dtype=MU_DTYPES[mu_dtype], weight_decay=float(weight_decay),
                           mask=None if decay_all else decay_mask))
  return optax.chain(*parts)


def make_optimizer(train_cfg, updates_per_step=1):
  """(optax transformation, schedule over train steps) from `config.train`;
  updates_per_step: optimiser updates one train step makes (PPO epochs, nested updates)."""
  if int(updates_per_step) < 1:
    raise ValueError(f"updates_per_step={updates_per_step} must be >= 1")
  schedule = make_schedule(train_cfg)
  tx = adamw(per_update(schedule, int(updates_per_step)), b1=train_cfg.b1, b2=train_cfg.b2,
             eps=train_cfg.eps, weight_decay=train_cfg.weight_decay,
             grad_clip=train_cfg.grad_clip, mu_dtype=train_cfg.mu_dtype,
             decay_all=bool(train_cfg.decay_all))
  return tx, schedule


class Nested(NamedTuple):
  """Two optimisers with separate states, for a step that makes two kinds of update (post-
  training's inner prompt update and outer answer update): neither update's Adam moments see
  the other's gradients. The state is {"inner": ..., "outer": ...}; the step calls
  `.inner.update` / `.outer.update` on its half (update() itself is not meant to be called)."""
  inner: optax.GradientTransformation
  outer: optax.GradientTransformation

  def init(self, params):
    return {"inner": self.inner.init(params), "outer": self.outer.init(params)}

  def update(self, updates, state, params=None):
    raise TypeError("optim.Nested has two states: call .inner.update / .outer.update.")
