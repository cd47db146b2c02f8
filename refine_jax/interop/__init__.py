"""Interop with other checkpoint formats and the inference bundle.

  safetensors_io  read/write HF safetensors (single file, or shards + index); refuses pickles
  hf_config       FLA config.json (delta_net, gated_deltanet) <-> model.* fields
  hf_weights      FLA state-dict keys <-> NNX param paths (+ transposes), checked tables
  lact            LaCT (lact_swiglu) config + key rewrites on top of hf_weights
  hf_checkpoint   load_hf / save_hf: whole FLA/LaCT checkpoint dirs <-> models
  bundle          refine_jax's own inference bundle (params + config + tokenizer files)
  modelio         build a model from flat params without a random init
Entry points: refine_jax.convert, refine_jax.export, refine_jax.generate and
refine_jax.pretrained.load_pretrained. Kept import-light: import the submodule you need.
"""
