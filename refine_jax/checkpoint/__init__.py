"""Orbax checkpoints: training state (params, optimiser, data iterator) and params-only loading."""

from refine_jax.checkpoint.data_state import apply as apply_data_state
from refine_jax.checkpoint.data_state import snapshot as snapshot_data_state
from refine_jax.checkpoint.manager import Checkpointer, Restored
from refine_jax.checkpoint.params import load_params
