"""ReFINE: entropy-guided branch selection, cached-state rollouts, rewards, GRPO, the step.

Pure functions of a model + arrays; nothing here imports refine_jax.train.
"""
from refine_jax.refine import grpo, policy, reward, rollout, selection
from refine_jax.refine.policy import policy_forward, policy_logprobs
from refine_jax.refine.step import (Collected, collect, make_loss_fn, ntp_loss, objective,
                                    policy_loss, policy_objective, refine_loss, validate)

__all__ = ["grpo", "policy", "reward", "rollout", "selection", "Collected", "collect",
           "make_loss_fn", "ntp_loss", "objective", "policy_forward", "policy_logprobs",
           "policy_loss", "policy_objective", "refine_loss", "validate"]
