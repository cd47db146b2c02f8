"""Pretrain stage: next-token prediction on the data pipeline (python -m refine_jax.main
--config=configs/pretrain.py)."""

from refine_jax.train import loop, losses, stages


def step_spec(config):
  return stages.StepSpec(losses.ntp_loss, None, 1,
                         stages.lm_batch(config.train.batch_size, config.data.seq_len))


def run(config, workdir):
  spec = step_spec(config)
  result = loop.run_training(config, workdir, spec.loss_fn, eval_fn=losses.ntp_eval,
                             stage="pretrain")
  print(f"pretrain done: step {result.step}, loss {result.metrics.get('loss')}, "
        f"eval_ppl {result.eval_metrics.get('eval_ppl')}, run dir {result.workdir}")
  return result
