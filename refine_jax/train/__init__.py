"""Training: stages, the shared loop, optimiser, losses, metrics."""

from refine_jax.train.loop import TrainResult, run_training
from refine_jax.train.update import make_train_step
from refine_jax.train.losses import ntp_loss
from refine_jax.train.optim import make_optimizer, make_schedule
from refine_jax.train.stages import STAGES, get_stage
