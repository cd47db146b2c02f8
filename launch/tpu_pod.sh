#!/usr/bin/env bash
# Run refine_jax on a Cloud TPU pod slice (multi-host): create the TPU VM, copy this checkout to
# every worker, install, run the same command on all workers, and delete the slice.
#
#   BUCKET=my-bucket ZONE=us-central2-b launch/tpu_pod.sh all [-- --config.train.steps=1000]
#   launch/tpu_pod.sh create | setup | run [-- overrides] | logs | ssh | delete
# (`all` = create, setup, run, delete; the run dir is gs://my-bucket/runs/$TPU_NAME)
#
# Settings (environment variables):
#   TPU_NAME      slice name                          (default refine-jax-$USER)
#   ZONE          e.g. us-central2-b                  (required)
#   PROJECT       gcloud project                      (default: gcloud's configured one)
#   ACCELERATOR   e.g. v4-32, v5litepod-16, v6e-16    (default v4-32)
#   VERSION       TPU VM image                        (default tpu-ubuntu2204-base)
#   SPOT=1        preemptible capacity
#   CONFIG        config file                         (default configs/midtrain.py)
#   BUCKET        GCS bucket for run dirs: WORKDIR defaults to gs://$BUCKET/runs/$TPU_NAME
#   WORKDIR       run dir every worker sees: gs://BUCKET/PATH (checkpoints, metrics, TensorBoard
#                 events and eval/ are written there directly; the TPU VM's service account
#                 needs roles/storage.objectAdmin on the bucket), or a path on shared NFS /
#                 a gcsfuse mount. Without BUCKET the default is runs/<TPU_NAME> on each
#                 worker's disk, which only suits a single-host slice.
#   KEEP=1        with `all`: keep the slice after the run (default: delete it, even on failure)
#
# Multi-host: each worker runs `python -m refine_jax.main`; on a TPU VM the workers find each
# other through the TPU metadata (refine_jax.main calls jax.distributed.initialize() when
# TPU_WORKER_HOSTNAMES lists several hosts), and the mesh spans all chips. Rerunning `run` on
# the same WORKDIR resumes from its newest checkpoint.
set -euo pipefail

TPU_NAME=${TPU_NAME:-refine-jax-${USER:-user}}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/midtrain.py}
if [[ -n "${BUCKET:-}" ]]; then
  WORKDIR=${WORKDIR:-gs://${BUCKET#gs://}/runs/${TPU_NAME}}
fi
WORKDIR=${WORKDIR:-runs/${TPU_NAME}}
REMOTE_DIR=refine_jax
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
[[ -n "${ZONE:-}" ]] || die "set ZONE (e.g. ZONE=us-central2-b), the zone with your TPU quota"
command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud SDK"
[[ "$WORKDIR" != *://* || "$WORKDIR" == gs://* ]] || die "WORKDIR=$WORKDIR: only gs:// URLs \
are supported (e.g. BUCKET=my-bucket, or WORKDIR=gs://BUCKET/run); mount other storage on \
every worker and pass the mount path"

GC=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && COMMON+=(--project="$PROJECT")

on_all() {  # run a shell command on every worker of the slice
  "${GC[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all --command="$1"
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  "${GC[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$VERSION" "${extra[@]}"
}

setup() {
  # Ship this checkout (tracked + untracked files, no runs/ or caches) to every worker.
  local tgz
  tgz=$(mktemp /tmp/refine_jax.XXXXXX.tgz)
  tar -C "$ROOT" --exclude=./runs --exclude=./.git --exclude='__pycache__' -czf "$tgz" .
  "${GC[@]}" scp "$tgz" "$TPU_NAME:~/refine_jax.tgz" "${COMMON[@]}" --worker=all
  rm -f "$tgz"
  on_all "set -e; rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR; tar -C ~/$REMOTE_DIR -xzf ~/refine_jax.tgz;
    cd ~/$REMOTE_DIR; python3 -m pip install -q -U pip;
    python3 -m pip install -q -e '.[tpu,gcs]';
    python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
}

run() {
  local args="" a
  [[ "$WORKDIR" == gs://* ]] || echo "tpu_pod.sh: WORKDIR=$WORKDIR is on each worker's own disk \
unless it is a shared mount; set BUCKET (or WORKDIR=gs://...) for a multi-host slice" >&2
  for a in "$@"; do args+=" $(printf '%q' "$a")"; done
  # Same command on all workers; each one logs to its own file, worker 0's is also streamed.
  on_all "set -o pipefail; cd ~/$REMOTE_DIR && python3 -m refine_jax.main --config=$(printf '%q' "$CONFIG") \
    --workdir=$(printf '%q' "$WORKDIR")$args 2>&1 | tee ~/refine_jax_run.log"
}

logs() { on_all "tail -n 20 ~/refine_jax_run.log"; }
ssh_() { "${GC[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=0; }
delete() { "${GC[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet; }

cmd=${1:-}
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
case "$cmd" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  logs) logs ;;
  ssh) ssh_ ;;
  delete) delete ;;
  all)
    create
    [[ "${KEEP:-0}" == 1 ]] || trap delete EXIT  # never leave a paid slice running
    setup
    run "$@"
    ;;
  *) die "usage: $0 {create|setup|run|logs|ssh|delete|all} [-- --config.a.b=v ...]" ;;
esac
