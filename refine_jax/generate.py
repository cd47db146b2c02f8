"""Text generation from any saved model.

    python -m refine_jax.generate --checkpoint PATH --prompt "Once upon a time" \\
        [--prompt ...] [--max-new-tokens 64] [--temperature 0] [--top-k 0] [--seed 0]

PATH is anything `refine_jax.load_pretrained` takes (run dir, Orbax checkpoint, bundle,
HF/FLA dir). The prompt is prefilled in one pass, then tokens are decoded one at a time from
the model's cache (fast-weight state + conv / KV buffers), stopping at eos.
`--temperature 0` is greedy. `--ttt-steps N` (N > 0) first adapts a copy of the weights to
the prompt with the test-time-training stage (refine_jax.train.ttt), when that stage exists.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refine_jax import cli
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.errors import UserError
from refine_jax.pretrained import load_pretrained
from refine_jax.train import ttt


@nnx.jit(static_argnames=())
def _forward(model, ids_BT, cache):
  out = model(ids_BT, cache)
  return out.logits[:, -1], out.cache


def _sample(logits_BV, key, temperature: float, top_k: int):
  if temperature <= 0:
    return jnp.argmax(logits_BV, -1)
  logits = logits_BV / temperature
  if 0 < top_k < logits.shape[-1]:  # k >= vocab keeps every token (as HF's top-k does)
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, -1)


def generate(model, prompt_ids, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, eos_id: int | None = None, seed: int = 0) -> list[int]:
  """New token ids after `prompt_ids` (one sequence), decoded from the model's cache."""
  prompt = np.asarray(prompt_ids, np.int32).reshape(1, -1)
  if prompt.shape[1] == 0:
    raise ValueError("generate: the prompt is empty; give at least one token (e.g. bos).")
  if max_new_tokens <= 0:
    return []
  cache = model.init_cache(1, prompt.shape[1] + max_new_tokens)
  logits, cache = _forward(model, jnp.asarray(prompt), cache)
  key = jax.random.key(seed)
  out: list[int] = []
  for _ in range(max_new_tokens):
    key, sub = jax.random.split(key)
    tok = _sample(logits, sub, temperature, top_k)
    out.append(int(tok[0]))
    if eos_id is not None and out[-1] == eos_id:
      break
    logits, cache = _forward(model, tok[:, None].astype(jnp.int32), cache)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m refine_jax.generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="run dir / Orbax ckpt / bundle / HF dir")
  p.add_argument("--prompt", action="append", required=True, help="repeat for several")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--ttt-steps", type=int, default=0,
                 help="test-time ReFINE steps on each prompt before answering (0 = off)")
  return cli.guard("refine_jax.generate", _run, p.parse_args(argv))


def _check_args(args):
  for flag, value, zero in (("--max-new-tokens", args.max_new_tokens, "generates nothing"),
                            ("--temperature", args.temperature, "is greedy"),
                            ("--top-k", args.top_k, "keeps every token"),
                            ("--ttt-steps", args.ttt_steps, "skips test-time training")):
    if not value >= 0:  # also NaN
      raise UserError(f"{flag} {value}: must be >= 0 (0 {zero}).")
  cli.check_input("--checkpoint", args.checkpoint)


def _run(args) -> int:
  _check_args(args)  # before the model loads: a typo fails in a second
  model, config = load_pretrained(args.checkpoint)
  tok = get_tokenizer(config.data)
  add_bos = bool(config.data.add_bos)
  for i, prompt in enumerate(args.prompt):
    ids = ([tok.bos_id] if add_bos else []) + tok.encode(prompt)
    m = ttt.adapt(nnx.clone(model), config, ids, args.ttt_steps) if args.ttt_steps > 0 else model
    new = generate(m, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, eos_id=tok.eos_id, seed=args.seed + i)
    print(f"### prompt {i}: {prompt!r}\n{prompt}{tok.decode(new)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
