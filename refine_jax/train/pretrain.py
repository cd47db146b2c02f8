"""Pretrain stage: next-token prediction on the data pipeline (python -m refine_jax.main
--config=configs/pretrain.py)."""

from refine_jax.train import loop, losses


def run(config, workdir):
  result = loop.run_training(config, workdir, losses.ntp_loss, eval_fn=losses.ntp_eval,
                             stage="pretrain")
  print(f"pretrain done: step {result.step}, loss {result.metrics.get('loss')}, "
        f"eval_ppl {result.eval_metrics.get('eval_ppl')}, run dir {result.workdir}")
  return result
