"""One optimiser update, the way every stage makes it: an objective's gradient accumulated
over microbatches, epochs x minibatches updates in one lax.scan, metrics weighted over them.

Every term of an objective (refine_jax.losses) is divided once by its weight in the update's
whole batch, so train.microbatches, PPO minibatches, devices and processes never change what
is optimised or logged. Stages build their steps on `updates`; `loss_step` is the step of one
objective, `check_split` the one rule for how a batch splits.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from refine_jax import losses
from refine_jax.train.spec import StepSpec


def loss_step(loss_fn, epochs=1, minibatches=1):
  """make_step (spec.StepSpec) of one objective: loss_fn, an Objective or a plain per-row-mean
  loss_fn(model, batch, rng) -> (loss, metrics). epochs x minibatches updates per batch
  (`updates`; 1 x 1 = one update, the default step; more = the NTP stage's SFT baseline with
  ReFINE's update count), each accumulating its gradient over `microbatches`."""
  def make_step(graphdef, tx, microbatches=1):
    def step(params, opt_state, rest, batch, rng):
      return updates(model_grad(graphdef, loss_fn, rest), tx, params, opt_state, batch, rng=rng,
                     epochs=int(epochs), minibatches=int(minibatches),
                     microbatches=int(microbatches))
    return step
  return make_step


def loss_spec(loss_fn) -> StepSpec:
  """The StepSpec of loss_fn's default step, for run_training (one update per batch)."""
  return StepSpec(loss_step(loss_fn), 1, {})


def make_train_step(graphdef, loss_fn, tx, microbatches=1):
  """The default step of `loss_fn`, built: step(params, opt_state, rest, batch, rng) ->
  (params, opt_state, metrics incl. "loss")."""
  return loss_step(loss_fn)(graphdef, tx, microbatches)


def check_split(batch_size, *, microbatches=1, minibatches=1, dp=1, field="train.batch_size",
                minibatch_field="refine.ppo_minibatches"):
  """THE batch-split rule (config validation and the steps use it): every update's minibatch
  splits into `microbatches` equal parts, each spread evenly over the dp data-parallel devices
  (a sharded Pallas kernel cannot take an uneven split)."""
  parts = [(minibatch_field, minibatches), ("train.microbatches", microbatches),
           ("the data-parallel size mesh.data*mesh.fsdp", dp)]
  n = int(minibatches) * int(microbatches) * int(dp)
  if int(batch_size) % n == 0:
    return
  if int(minibatches) * int(microbatches) == 1:
    raise ValueError(f"{field}={batch_size} is not divisible by the data-parallel size "
                     f"mesh.data*mesh.fsdp={dp}; use a multiple of {dp}.")
  named = " x ".join(f"{name}={v}" for name, v in parts if int(v) > 1)
  raise ValueError(f"{field}={batch_size} does not split into {named} equal parts (each "
                   f"update's minibatch in microbatches, each spread over the devices); make "
                   f"{field} a multiple of {n}.")


class GradFn(NamedTuple):
  """grad(params, batch, rng, norms) -> ((loss, (terms, metrics)), grads) of `objective`, with
  each term's sum divided by norms[term] (its total weight in the whole update)."""
  grad: Callable
  objective: losses.Objective


_PART_GRADS = "_share_of_grads"  # carried through accumulation, turned into "grad_share"


def model_grad(graphdef, loss_fn, rest) -> GradFn:
  """The one value_and_grad over a model's params of an Objective (losses.as_objective).
  With objective.share_of, the grads of those terms alone ride along in the metrics (summed
  over microbatches like the grads) so `updates` can log their share of the gradient."""
  obj = losses.as_objective(loss_fn)

  def f(params, batch, rng, norms, coefs=obj.coefs):
    terms, metrics = obj.terms(nnx.merge(graphdef, params, rest), batch, rng)
    return losses.combine(terms, coefs, norms), (terms, metrics)

  vg = jax.value_and_grad(f, has_aux=True)
  if not obj.share_of:
    return GradFn(vg, obj)
  part_coefs = {k: c for k, c in obj.coefs.items() if k in obj.share_of}

  def with_part(params, batch, rng, norms):
    (loss, (terms, metrics)), grads = vg(params, batch, rng, norms)
    part = jax.grad(lambda p: f(p, batch, rng, norms, part_coefs)[0])(params)
    return (loss, (terms, dict(metrics, **{_PART_GRADS: part}))), grads

  return GradFn(with_part, obj)


def grad_share(part, grads):
  """|g_S| / (|g_S| + |g - g_S|): how much of the update's gradient the terms S make."""
  a = global_norm(part)
  b = global_norm(jax.tree.map(lambda g, p: g.astype(jnp.float32) - p.astype(jnp.float32),
                               grads, part))
  return a / jnp.maximum(a + b, 1e-30)


def _on_batch(data, fn):
  """fn(batch dict) applied to a batch dict, or to the batch of a (batch, collected) pair."""
  if isinstance(data, dict):
    return fn(data)
  if isinstance(data, tuple) and data and isinstance(data[0], dict):
    return (fn(data[0]),) + tuple(data[1:])
  return data


def _rows(batch):
  return jax.tree.leaves(batch)[0].shape[0]


def with_row_ids(data):
  """Adds "row_ids" (each row's index in the whole batch) to a batch dict, or to the batch of a
  (batch, collected) pair, before it is cut into minibatches / microbatches: per-row random
  draws (refine.step) key on it, so they do not depend on the cut."""
  return _on_batch(data, lambda b: b if "row_ids" in b else
                   dict(b, row_ids=jnp.arange(_rows(b), dtype=jnp.int32)))


def _at_update(data, i):
  """Tags every row with the index of the step's update that sees it ("update_index"): the
  PPO objective scores update 0 -- at exactly the weights its rollouts were collected with --
  on-policy (ratio exactly 1, as the fused step), whatever rounding a recomputation has."""
  return _on_batch(data, lambda b: dict(b, update_index=jnp.full((_rows(b),), i, jnp.int32)))


def updates(grad_fn: GradFn, tx, params, opt_state, data, *, rng, epochs=1, minibatches=1,
            microbatches=1):
  """The one optimiser update every stage makes (plain NTP, PPO epochs x minibatches, nested
  post-training's inner and outer updates, TTT): epochs x minibatches updates of `tx`; update i
  takes minibatch i % minibatches of `data` (split_microbatches: strided, so each spans every
  device) and accumulates its grads over `microbatches`.

  Each update optimises its objective over the update's WHOLE (mini)batch: every term's sum is
  divided once by the term's total weight there (objective.weights), so the loss and gradient
  are the same for any `microbatches`, device or process count. Several updates run in ONE
  lax.scan (one copy of the update in the program); a single update is the plain call.
  Returns (params, opt_state, metrics): every metric and "loss" weighted over all the step's
  updates the same way (with a zero lr, the same numbers for any minibatch split), grad_norm the
  mean over updates."""
  data = with_row_ids(data)
  coefs = grad_fn.objective.coefs

  def update(params, opt_state, sub):
    norms = grad_fn.objective.weights(sub)
    (_, (terms, metrics)), grads = accumulate(grad_fn.grad, params, sub, microbatches, rng,
                                              norms)
    if _PART_GRADS in metrics:
      metrics = dict(metrics)
      metrics["grad_share"] = grad_share(metrics.pop(_PART_GRADS), grads)
    delta, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, delta), opt_state, (terms, metrics, global_norm(grads))

  if int(epochs) * int(minibatches) == 1:
    params, opt_state, (terms, metrics, gnorm) = update(params, opt_state, _at_update(data, 0))
    return params, opt_state, _report(terms, metrics, gnorm, coefs)
  subs = split_microbatches(data, minibatches)

  def body(carry, i):
    sub = _at_update(jax.tree.map(lambda x: x[i % minibatches], subs), i)
    params, opt_state, row = update(*carry, sub)
    return (params, opt_state), row

  n = int(epochs) * int(minibatches)
  (params, opt_state), (terms, metrics, gnorm) = jax.lax.scan(body, (params, opt_state),
                                                              jnp.arange(n))
  total = lambda tree: jax.tree.map(lambda x: jnp.sum(x, axis=0), tree)
  metrics = {k: total(v) if isinstance(v, losses.Term) else jnp.mean(v, axis=0)
             for k, v in metrics.items()}
  return params, opt_state, _report(total(terms), metrics, jnp.mean(gnorm), coefs)


def _report(terms, metrics, grad_norm, coefs):
  """Logged metrics of accumulated Terms; "loss" = sum_t coef_t * mean_t."""
  loss = losses.combine(terms, coefs, {n: t.weight for n, t in terms.items()})
  return dict(losses.finalize(terms, metrics, coefs, loss), grad_norm=grad_norm)


def split_microbatches(tree, microbatches):
  """Every [B, ...] leaf -> [M, B/M, ...]. Microbatch i holds rows i, i+M, i+2M, ... (strided,
  not contiguous): with B sharded over mesh.data*mesh.fsdp each device then holds B/(M*dp) rows
  of EVERY microbatch, so each scan iteration runs on all chips at once."""
  M = int(microbatches)

  def split(x):
    if x.ndim == 0 or x.shape[0] % M:
      raise ValueError(f"a batch entry of shape {x.shape} does not split into train.microbatches="
                       f"{M} equal parts; make train.batch_size a multiple of it.")
    return jnp.swapaxes(x.reshape(x.shape[0] // M, M, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, tree)


def merge_microbatches(tree_M):
  """Inverse of split_microbatches: [M, B/M, ...] leaves -> [B, ...] in the original row order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree_M)


def accumulate(value_and_grad_fn, params, batch, microbatches, rng, norms):
  """Gradient accumulation: ((loss, aux), grads) of value_and_grad_fn(params, batch, rng, norms)
  computed as `microbatches` sequential microbatches of `batch` (split_microbatches) in a
  lax.scan, so the compiled body and the activation memory are those of one microbatch
  whatever M is.

  Everything is SUMMED over microbatches in float32 (grads come back in their own dtype): the
  loss divides each term by its total weight in the whole batch (`norms`, see losses), so the
  sum of microbatch losses and gradients is the whole-batch loss and gradient, ragged masks
  included. Every microbatch gets the same rng (random draws key on each row's id, not on
  the microbatch); microbatches == 1 is exactly the plain call."""
  M = int(microbatches)
  if M < 1:
    raise ValueError(f"train.microbatches={microbatches} must be >= 1.")
  if M == 1:
    return value_and_grad_fn(params, batch, rng, norms)
  batch_M = split_microbatches(batch, M)

  def one(mb):
    return value_and_grad_fn(params, mb, rng, norms)

  shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], batch_M))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(acc, mb):
    return jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc, one(mb)), None

  (loss, aux), grads = jax.lax.scan(body, zeros, batch_M)[0]
  grads = jax.tree.map(lambda g, s: g.astype(s.dtype), grads, shapes[1])
  return (loss, aux), grads


def global_norm(tree):
  return optax.tree.norm(tree)
