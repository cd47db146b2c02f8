"""Rewards of a rollout against the true continuation, and a registry for user rewards.

Every reward function takes a `RewardInputs` and returns one scalar per rollout, [G] float32
(G = number of rollouts). Hidden states are the policy's final-norm hidden states of the k
rollout tokens and of the k true tokens, both fed from the same cache, so they differ only
where the continuations differ. Rewards are treated as constants (stop_gradient) by GRPO.

Register your own:

    from refine_jax.refine import reward
    @reward.register("my_reward")
    def my_reward(inp: reward.RewardInputs):
      return ...  # [G]

and set `--config.refine.reward=my_reward` (the module defining it must be imported first,
e.g. from your config file).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class RewardInputs(NamedTuple):
  rollout_tokens_Gk: jax.Array   # int32
  true_tokens_Gk: jax.Array      # int32
  rollout_hidden_GkD: jax.Array  # float
  true_hidden_GkD: jax.Array     # float


_REGISTRY: dict[str, Callable[[RewardInputs], jax.Array]] = {}


def register(name):
  """Decorator: make `fn(RewardInputs) -> [G]` available as refine.reward=name."""
  def deco(fn):
    _REGISTRY[name] = fn
    return fn
  return deco


def get(name):
  if name not in _REGISTRY:
    raise ValueError(f"refine.reward={name!r} is not registered; known: {sorted(_REGISTRY)}. "
                     "Register a new one with refine_jax.refine.reward.register(name).")
  return _REGISTRY[name]


def cosine_per_token(a_GkD, b_GkD, eps=1e-8):
  """Cosine similarity along the last axis, [G, k] float32 (eps guards zero vectors)."""
  a = a_GkD.astype(jnp.float32)
  b = b_GkD.astype(jnp.float32)
  dot = jnp.sum(a * b, axis=-1)
  na = jnp.sqrt(jnp.sum(a * a, axis=-1))
  nb = jnp.sqrt(jnp.sum(b * b, axis=-1))
  return dot / jnp.maximum(na * nb, eps)


@register("cosine")
def cosine(inp: RewardInputs):
  """Mean over the k positions of cos(h_rollout, h_true)  (mid-training default)."""
  return jnp.mean(cosine_per_token(inp.rollout_hidden_GkD, inp.true_hidden_GkD), axis=-1)


@register("binary")
def binary(inp: RewardInputs):
  """Fraction of the k rollout tokens equal to the true tokens  (TTT default)."""
  return jnp.mean((inp.rollout_tokens_Gk == inp.true_tokens_Gk).astype(jnp.float32), axis=-1)


@register("hybrid")
def hybrid(inp: RewardInputs):
  """cosine + binary  (post-training default)."""
  return cosine(inp) + binary(inp)


register("cosine_similarity")(cosine)  # the reference code's name for it


def needs_hidden(name):
  """Whether a reward reads hidden states (lets the step skip the true-continuation pass)."""
  return name != "binary"


def compute(name, inp: RewardInputs):
  return jax.lax.stop_gradient(get(name)(inp).astype(jnp.float32))
