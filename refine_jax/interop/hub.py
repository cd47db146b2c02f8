"""Hugging Face Hub ids for starting weights -> a local snapshot in the normal HF cache.

    hf://owner/name[@revision]   configs (`init_checkpoint`); load_pretrained and convert too
    owner/name[@revision]        load_pretrained(...) and `convert --from-hf` only, and only
                                 when no local path of that name exists

The snapshot holds config.json, the safetensors weights (+ index) and the tokenizer files,
nothing else (no pickles, no training logs), so it is an ordinary HF/FLA directory for
interop.hf_checkpoint. huggingface_hub's own environment applies: HF_HUB_CACHE / HF_HOME for
the cache, HF_TOKEN for gated models, HF_HUB_OFFLINE=1 to use the cache only.
"""
from __future__ import annotations

import os
import re

import huggingface_hub as hfh
from huggingface_hub import constants, errors  # errors: huggingface_hub >= 0.24 (requirements.txt)

SCHEME = "hf://"
ALLOW_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "tokenizer.model")
# HF repo names: letters, digits, '-', '_', '.', at most 96 characters, no '--' or '..'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_ID = re.compile(rf"^({_NAME}/{_NAME})(?:@(\S+))?$")
EXAMPLE = "hf://fla-hub/delta_net-1.3B-100B"


def parse(text: str, *, bare: bool = False) -> tuple[str, str | None] | None:
  """(repo_id, revision or None) if `text` names a hub model, else None (a local path).

  hf://... must be a well-formed id (ValueError otherwise). bare=True also takes a plain
  owner/name[@revision], but only when no local file or directory of that name exists.
  """
  text = os.fspath(text)
  if text.startswith(SCHEME):
    m = _ID.match(text[len(SCHEME):])
    if m is None or "--" in m.group(1) or ".." in m.group(1):
      raise ValueError(f"{text!r} is not a hub id; write hf://owner/name or "
                       f"hf://owner/name@revision, e.g. {EXAMPLE}.")
    return m.group(1), m.group(2)
  if bare and not os.path.exists(text):
    m = _ID.match(text)
    if m is not None and "--" not in m.group(1) and ".." not in m.group(1):
      return m.group(1), m.group(2)
  return None


def local_dir(text: str, *, bare: bool = False) -> str:
  """`text` itself for a local path; for a hub id (see parse) its snapshot dir, downloaded
  into the HF cache on first use."""
  spec = parse(text, bare=bare)
  if spec is None:
    return text
  try:
    return snapshot(*spec)
  except FileNotFoundError as e:
    if os.fspath(text).startswith(SCHEME):
      raise
    # A bare id may as well be a mistyped local path: say both.
    raise FileNotFoundError(f"{text!r} is not a local path; as a hub id: {e}") from e


def snapshot(repo_id: str, revision: str | None = None) -> str:
  """The local snapshot dir (…/models--owner--name/snapshots/<commit>) of a hub model.

  Raises FileNotFoundError with the fix when it is neither cached nor downloadable.
  """
  name = repo_id + (f"@{revision}" if revision else "")
  # Read the flag at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
  offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or bool(constants.HF_HUB_OFFLINE)
  fix = (f"run once with internet access (or `{_cli(hfh.__version__)} download {repo_id}"
         f"{' --revision ' + revision if revision else ''}`, then copy the cache), or give a "
         "local directory holding its config.json and *.safetensors")
  try:
    path = hfh.snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOW_PATTERNS),
                                 local_files_only=offline)
  except errors.RevisionNotFoundError as e:
    raise FileNotFoundError(f"hub model {repo_id} has no revision {revision!r}; check the name "
                            "after '@' (a branch, tag or commit).") from e
  except errors.RepositoryNotFoundError as e:  # also gated/private without a token
    raise FileNotFoundError(
        f"hub model {name} was not found on the Hugging Face Hub (a typo, or a private/gated "
        "model: set HF_TOKEN or log in); check the id or give a local directory.") from e
  except errors.LocalEntryNotFoundError as e:
    why = ("HF_HUB_OFFLINE=1 is set" if offline
           else f"the Hub could not be reached ({type(e.__cause__ or e).__name__})")
    raise FileNotFoundError(
        f"hub model {name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {why}; {fix}.") from e
  if not any(f.endswith(".safetensors") for f in os.listdir(path)):
    raise FileNotFoundError(
        f"hub model {name} ({path}) has no *.safetensors weights (refine_jax never loads "
        f"pickled .bin files); {'run once online to finish the download, ' if offline else ''}"
        "or convert the weights to safetensors and give that local directory.")
  return path


def describe(path: str) -> str:
  """'owner/name@commit' for a snapshot dir of the HF cache, else the path itself."""
  parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
  if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
    return f"{parts[-3][len('models--'):].replace('--', '/', 1)}@{parts[-1]}"
  return path


def _cli(version: str) -> str:
  """The download command of this huggingface_hub: `hf` since 0.34 (`huggingface-cli` is
  gone in 1.x), `huggingface-cli` before."""
  major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
  return "hf" if (major, minor) >= (0, 34) else "huggingface-cli"


def _truthy(v: str | None) -> bool:
  return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")
