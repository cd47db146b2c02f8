"""Training: stages, the shared loop, optimiser, losses, metrics."""

from refine_jax.train.loop import TrainResult, make_train_step, run_training
from refine_jax.train.losses import ntp_loss
from refine_jax.train.optim import make_optimizer, make_schedule
from refine_jax.train.stages import STAGES, get_stage
