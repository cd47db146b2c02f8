"""refine_jax: ReFINE for fast-weight language models in JAX / Flax NNX.

`refine_jax.load_pretrained(path) -> (model, config)` loads a run directory, an Orbax
checkpoint, an exported bundle or an HF/FLA directory. Imported lazily so `import refine_jax`
stays cheap.
"""


def __getattr__(name):
  if name == "load_pretrained":
    from refine_jax.pretrained import load_pretrained  # lazy: `import refine_jax` stays cheap
    return load_pretrained
  raise AttributeError(f"module 'refine_jax' has no attribute {name!r}")
