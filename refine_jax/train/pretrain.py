"""Pretrain stage: next-token prediction on the data pipeline (python -m refine_jax.main
--config=configs/pretrain.py)."""

from refine_jax.eval import nll
from refine_jax.train import loop, losses, update
from refine_jax.train.spec import StepSpec, lm_batch


def step_spec(config):
  """NTP; with train.ntp_epochs x ntp_minibatches > 1, that many updates per batch over strided
  minibatches (an SFT baseline matched to ReFINE's ppo_epochs x ppo_minibatches updates)."""
  tc = config.train
  epochs, mbs = int(tc.ntp_epochs), int(tc.ntp_minibatches)
  return StepSpec(update.loss_step(losses.ntp_loss, epochs, mbs), epochs * mbs,
                  lm_batch(tc.batch_size, config.data.seq_len,
                           segments=config.data.reset_at_documents))


def minibatches(config):
  """(field, n): the minibatches each step's batch splits into (validate.py checks the split)."""
  return "train.ntp_minibatches", int(config.train.ntp_minibatches)


def run(config, workdir):
  spec = step_spec(config)
  result = loop.run_training(config, workdir, spec, eval_fn=nll.ntp_eval, stage="pretrain")
  print(f"pretrain done: step {result.step}, loss {result.metrics.get('loss')}, "
        f"eval_ppl {result.eval_metrics.get('eval_ppl')}, run dir {result.workdir}")
  return result
