"""Flax NNX models: DeltaNet / Gated DeltaNet (and attention / LaCT) language models."""
from refine_jax.models.config import delta_dims, layer_kinds, validate
from refine_jax.models.lm import LM, LMOutput, Block, build_model, mixer_class, param_count

__all__ = ["delta_dims", "layer_kinds", "validate", "LM", "LMOutput",
           "Block", "build_model", "param_count", "mixer_class"]
