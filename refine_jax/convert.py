"""Convert between FLA/HF checkpoints and refine_jax bundles.

    python -m refine_jax.convert --from-hf DIR|ID --out OUT
        FLA `DeltaNetForCausalLM` / `GatedDeltaNetForCausalLM` (config.json + model.safetensors,
        or shards + model.safetensors.index.json) -> a refine_jax bundle (params + config.json
        + tokenizer files), loadable by `refine_jax.load_pretrained(OUT)`, usable as
        `--config.init_checkpoint=OUT`. ID: a hub model, owner/name[@revision] or
        hf://owner/name[@revision] (refine_jax.interop.hub; cached in the HF cache).
    python -m refine_jax.convert --to-hf SRC --out OUT [--dtype bfloat16] [--max-shard-size 5GB]
        Any model load_pretrained takes (run dir, Orbax checkpoint, bundle) -> FLA format
        (config.json with FLA's model_type/architectures + model.safetensors), loadable by
        `AutoModelForCausalLM.from_pretrained(OUT)` with `import fla`.

Importing then exporting gives back bit-identical float32 tensors. Only safetensors are read:
pickled .bin/.pt files are refused (unpickling can run arbitrary code).
"""
from __future__ import annotations

import argparse
import os
import sys

from refine_jax import cli
from refine_jax.errors import UserError
from refine_jax.interop import bundle, hf_checkpoint, hf_config, hub
from refine_jax.pretrained import load_pretrained


def from_hf(hf_dir: str, out_dir: str) -> str:
  spec = hub.parse(hf_dir, bare=True)
  hf_dir = hub.local_dir(hf_dir, bare=True)
  model, config, hf_cfg = hf_checkpoint.load_hf(hf_dir)
  source = f"hf://{hub.describe(hf_dir)}" if spec else f"hf:{os.path.abspath(hf_dir)}"
  bundle.save_bundle(out_dir, model, config, source=source, tokenizer_dir=hf_dir,
                     hf_config=hf_cfg)
  return out_dir


def to_hf(src: str, out_dir: str, *, dtype: str | None = None,
          max_shard_bytes: int | None = None) -> list[str]:
  src = hub.local_dir(src, bare=True)  # a hub id: its snapshot keeps FLA-only config fields
  model, config = load_pretrained(src)
  hf_base = bundle.read_hf_config_copy(src) if bundle.is_bundle(src) else None
  if hf_base is None and hf_checkpoint.is_hf_dir(src):
    hf_base = hf_config.read_hf_config(src)
  return hf_checkpoint.save_hf(model, config, out_dir, hf_base=hf_base, dtype=dtype,
                               max_shard_bytes=max_shard_bytes,
                               tokenizer_dir=_tokenizer_dir(config))


def _tokenizer_dir(config) -> str | None:
  path = config.data.tokenizer_path
  if not path or config.data.tokenizer == "byte":
    return None
  return path if os.path.isdir(path) else os.path.dirname(path)


_UNITS = (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
          ("KB", 10**3), ("B", 1))


def parse_size(text: str) -> int:
  """'5GB' / '500MB' / '1234' -> bytes (HF's max_shard_size spelling)."""
  t = text.strip().upper()
  unit, mult = next(((u, m) for u, m in _UNITS if t.endswith(u)), ("", 1))
  try:
    size = float(t.removesuffix(unit)) * mult
  except ValueError:
    size = 0.0
  if not 1 <= size < 2**63:  # also NaN and inf
    raise UserError(f"--max-shard-size {text}: not a size; write e.g. 5GB, 500MB, 2GiB or a "
                    "byte count.")
  return int(size)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m refine_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--from-hf", metavar="DIR|ID",
                   help="FLA/HF checkpoint dir, or hub id owner/name[@revision], to import")
  src.add_argument("--to-hf", metavar="SRC", help="run dir / Orbax checkpoint / bundle to export")
  p.add_argument("--out", required=True, metavar="DIR", help="output directory")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                 help="--to-hf tensor dtype (default float32, exact)")
  p.add_argument("--max-shard-size", default=None,
                 help="--to-hf: shard past this size, e.g. 5GB (default: one file)")
  return cli.guard("refine_jax.convert", _run, p.parse_args(argv))


def _run(args) -> int:
  if args.from_hf:
    _check_from_hf(args)
    out = from_hf(args.from_hf, args.out)
    print(f"converted {args.from_hf} -> {out} (load with refine_jax.load_pretrained)")
  else:
    size = parse_size(args.max_shard_size) if args.max_shard_size else None
    cli.check_input("--to-hf", args.to_hf)
    cli.check_output("--out", args.out, args.to_hf)
    files = to_hf(args.to_hf, args.out, dtype=args.dtype, max_shard_bytes=size)
    print(f"exported {args.to_hf} -> {args.out}: {', '.join(files)}")
  return 0


HF_DIRS = "an FLA/HF checkpoint dir (config.json + model.safetensors) or a hub id owner/name"


def _check_from_hf(args):
  """Mistakes that need no loading, each naming its flag."""
  if args.dtype or args.max_shard_size:
    raise UserError("--dtype and --max-shard-size apply to --to-hf only; drop them.")
  if hub.parse(args.from_hf, bare=True) is None and not os.path.exists(args.from_hf):
    raise FileNotFoundError(f"--from-hf {args.from_hf} does not exist; give {HF_DIRS}.")
  cli.check_input("--from-hf", args.from_hf, HF_DIRS)
  cli.check_output("--out", args.out, args.from_hf)


if __name__ == "__main__":
  sys.exit(main())
