"""Export a trained model for inference: params + config (+ tokenizer files) as a bundle.

    python -m refine_jax.export --run RUN_DIR --out OUT [--step N]

RUN_DIR is a training run (its newest good checkpoint; --step picks one), or any path
`refine_jax.load_pretrained` takes. OUT holds only what inference needs (no optimiser or
data-iterator state): `refine_jax.load_pretrained(OUT)`, `python -m refine_jax.generate
--checkpoint OUT`, or `python -m refine_jax.convert --to-hf OUT --out HF_DIR`.
"""
from __future__ import annotations

import argparse
import os
import sys

from refine_jax import cli
from refine_jax.interop import bundle
from refine_jax.pretrained import load_pretrained


def export(src: str, out_dir: str, *, step: int | None = None) -> str:
  path = src if step is None else _step_dir(src, step)
  model, config = load_pretrained(path)
  hf_cfg = bundle.read_hf_config_copy(src) if bundle.is_bundle(src) else None
  return bundle.save_bundle(out_dir, model, config, source=f"export:{os.path.abspath(path)}",
                            hf_config=hf_cfg)


def _step_dir(src: str, step: int) -> str:
  ckpts = os.path.join(src, "checkpoints")
  if not os.path.isdir(ckpts):
    raise FileNotFoundError(f"--step {step}: {src} has no checkpoints/ directory, so it is not a "
                            "training run; drop --step, or give --run the run directory.")
  path = os.path.join(ckpts, str(step))
  if not os.path.isdir(path):
    have = sorted((d for d in os.listdir(ckpts) if d.isdigit()), key=int)
    raise FileNotFoundError(f"--step {step}: {path} does not exist (steps here: "
                            f"{', '.join(have) or 'none'}); pick one, or drop --step for the "
                            "newest.")
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m refine_jax.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", required=True, metavar="DIR",
                 help="run dir (or any path load_pretrained takes)")
  p.add_argument("--out", required=True, metavar="DIR")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  return cli.guard("refine_jax.export", _run, p.parse_args(argv))


def _run(args) -> int:
  cli.check_input("--run", args.run)
  cli.check_output("--out", args.out, args.run)
  out = export(args.run, args.out, step=args.step)
  print(f"exported {args.run} -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
