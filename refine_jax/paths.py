"""Run-directory paths: every file a run reads or writes goes through here, for local paths and
gs:// URLs alike.

The layer is etils.epath: Orbax already takes epath.Path for its directories (arrays go through
tensorstore's own gcs driver), so config.json, metrics, events, eval/ and summaries use the same
path object and the same client (gcsfs via fsspec; tf.io.gfile when TensorFlow is installed).
The one thing epath cannot do on an object store is append: `append_bytes` uses GCS compose.

Only gs:// is remote: Orbax writes arrays with tensorstore's native driver for gs:// alone (an
s3:// directory would be taken for a relative local path). Other storage: mount it (gcsfuse,
NFS) and pass the mount path. Object stores have no directories, so `makedirs` does nothing
there (gcsfs would otherwise create a missing bucket).
"""

import json
import os
import re
import uuid

from absl import logging
from etils import epath
from etils.epath import backend

REMOTE_SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path):
  """'gs' for gs://..., None for a local path."""
  m = _SCHEME.match(os.fspath(path))
  return m.group(1).lower() if m else None


def is_remote(path) -> bool:
  return scheme(path) in REMOTE_SCHEMES


def check(path, what="path"):
  """ValueError for a URL scheme that run directories do not support."""
  s = scheme(path)
  if s is not None and s not in REMOTE_SCHEMES:
    raise ValueError(
        f"{what}={os.fspath(path)}: {s}:// is not supported; use gs://BUCKET/PATH or a local "
        "path (mount other storage, e.g. with gcsfuse or s3fs, and pass the mount point).")


def as_path(path) -> epath.Path:
  """epath.Path of a local path (made absolute) or a gs:// URL (kept as is)."""
  check(path)
  p = os.fspath(path)
  if is_remote(p):
    return epath.Path(p.rstrip("/"))
  return epath.Path(os.path.abspath(os.path.expanduser(p)))


def norm(path) -> str:
  """The string form run code passes around: absolute local path, or the URL."""
  return os.fspath(as_path(path))


def join(path, *parts) -> str:
  return os.fspath(as_path(path).joinpath(*parts))


def _fresh(path):
  """gcsfs caches listings per process (without expiry); files written by tensorstore or
  another host are not in it, so look again before answering."""
  if is_remote(path):
    fs = _gcsfs(path)
    if fs is not None:
      fs.invalidate_cache(os.fspath(path))
  return as_path(path)


def exists(path) -> bool:
  return _fresh(path).exists()


def isdir(path) -> bool:
  return _fresh(path).is_dir()


def isfile(path) -> bool:
  return _fresh(path).is_file()


def listdir(path) -> list:
  """Names in a directory; [] when it does not exist."""
  p = _fresh(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def makedirs(path):
  if not is_remote(path):
    os.makedirs(norm(path), exist_ok=True)


def read_text(path) -> str:
  return as_path(path).read_text()


def read_jsonl(path) -> list:
  """Parsed lines of a .jsonl file (metrics.jsonl, rollouts.jsonl), skipping a torn/corrupt
  line; [] when the file does not exist."""
  rows = []
  if not exists(path):
    return rows
  for line in read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning("skipping unreadable line in %s", path)
  return rows


def write_text(path, text):
  write_bytes(path, text.encode())


def write_bytes(path, data):
  """Readers see the old or the new content, never a torn file: locally a rename of a temp
  file; an object upload is all-or-nothing already."""
  p = as_path(path)
  if is_remote(p):
    p.write_bytes(data)
    return
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, p)


def append_bytes(path, data):
  """Appends `data`. On gs:// the new bytes go up as their own object, which one compose call
  then adds to the end (server-side, atomic): cost O(len(data)) and a kill at any moment
  leaves the object with all earlier appends intact (at worst a stray .append-* object)."""
  if not data:
    return
  p = as_path(path)
  if not is_remote(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "ab") as f:
      f.write(data)
      f.flush()
    return
  fs, there = _gcsfs(p), exists(p)
  if fs is None or not there:  # no gcsfs: no compose; first write: nothing to append to
    p.write_bytes((p.read_bytes() if there else b"") + data)
    return
  part = os.fspath(p.parent / f".append-{uuid.uuid4().hex}")
  fs.pipe(part, data)
  try:
    fs.merge(os.fspath(p), [os.fspath(p), part])
  finally:
    fs.rm(part)
    fs.invalidate_cache(os.fspath(p))


def append_text(path, text):
  append_bytes(path, text.encode())


def remove(path):
  p = as_path(path)
  if p.exists():
    p.unlink()


def move_tree(src, dst):
  """Moves a directory (on gs://: every object under the prefix, copy then delete)."""
  s, d = as_path(src), as_path(dst)
  if is_remote(s) and _gcsfs(s) is not None:
    _gcsfs(s).mv(os.fspath(s), os.fspath(d), recursive=True)
    return
  if not is_remote(d):
    d.parent.mkdir(parents=True, exist_ok=True)
  s.rename(d)


def _gcsfs(path):
  """epath's own gcsfs instance (so its listing cache is the one refreshed), also when epath
  reads through tf.io.gfile; None without gcsfs."""
  try:
    return backend.fsspec_backend.fs(os.fspath(path))
  except ImportError:
    return None


def check_writable(path, what="--workdir"):
  """Writes and deletes a small probe object under `path`, so a missing bucket, missing
  credentials or a missing client library fail at startup with one line naming the fix,
  instead of at the first checkpoint."""
  check(path, what)
  url = norm(path)
  if not is_remote(url):
    probe = join(url, f".write-probe-{uuid.uuid4().hex[:12]}")
    try:
      makedirs(url)
      write_text(probe, "ok")
      remove(probe)
    except OSError as e:
      raise PermissionError(f"{what}={url}: not writable ({e}); choose a directory you can "
                            "write to.") from e
    return
  bucket = url.split("/")[2]
  probe = join(url, f".write-probe-{uuid.uuid4().hex[:12]}")
  try:
    write_text(probe, "ok")
    remove(probe)
  except ImportError as e:
    raise ValueError(f"{what}={url}: gs:// needs gcsfs ({e}); pip install 'refine_jax[gcs]' "
                     "(or pip install gcsfs).") from e
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{what}={url}: bucket gs://{bucket} does not exist (or is not visible to these "
        f"credentials); create it (gcloud storage buckets create gs://{bucket} --location=... "
        "in the TPU's region) or fix the bucket name.") from e
  except Exception as e:  # pylint: disable=broad-except
    if _is_auth_error(e):
      raise PermissionError(
          f"{what}={url}: no credentials, or they may not write to gs://{bucket} ({e}); run "
          "`gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS to a "
          "service-account key; on a TPU/GCE VM give its service account "
          "roles/storage.objectAdmin on the bucket).") from e
    if isinstance(e, OSError):  # aiohttp connection / DNS errors are OSErrors
      raise ConnectionError(
          f"{what}={url}: cannot reach Cloud Storage ({type(e).__name__}: {str(e)[:200]}); "
          "check the network or proxy settings (STORAGE_EMULATOR_HOST for an emulator).") from e
    raise


def _is_auth_error(e) -> bool:
  code = getattr(e, "code", None)
  return (isinstance(e, PermissionError) or code in (401, 403)
          or type(e).__module__.startswith("google.auth") or "Forbidden" in str(e))
