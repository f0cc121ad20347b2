#!/usr/bin/env bash
# Shared settings and helpers for the tpu/*.sh scripts (sourced, not run).
# Every setting has an env-var default (PILOTRL_TPU_*) and a flag in the scripts that use it.
set -euo pipefail

TPU_NAME="${PILOTRL_TPU_NAME:-pilotrl-v5p-32}"
ZONE="${PILOTRL_TPU_ZONE:-us-east5-a}"
PROJECT="${PILOTRL_TPU_PROJECT:-}"
ACCELERATOR="${PILOTRL_TPU_TYPE:-v5p-32}"
RUNTIME="${PILOTRL_TPU_RUNTIME:-}"
SPOT="${PILOTRL_TPU_SPOT:-0}"
QUEUED="${PILOTRL_TPU_QUEUED:-0}"
REMOTE_DIR="${PILOTRL_REMOTE_DIR:-pilotrl_jax}"        # on each worker, relative to $HOME
LOG_DIR="${PILOTRL_LOG_DIR:-pilotrl_logs}"             # on each worker, relative to $HOME
GCS_BUCKET="${PILOTRL_GCS_BUCKET:-}"                   # mounted with gcsfuse at $MOUNT on every worker
MOUNT="${PILOTRL_MOUNT:-/mnt/gcs}"
DRY_RUN="${PILOTRL_DRY_RUN:-0}"

die() { echo "error: $*" >&2; exit 2; }

# Parse the flags every script shares; unknown flags are left in REST for the caller.
parse_common() {
  REST=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) TPU_NAME="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --type) ACCELERATOR="$2"; shift 2 ;;
      --runtime) RUNTIME="$2"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --bucket) GCS_BUCKET="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) REST+=("$1"); shift ;;
    esac
  done
}

# The TPU software version that matches an accelerator type (override with --runtime).
default_runtime() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "unknown accelerator type '$1'; expected v4-N, v5litepod-N, v5p-N or v6e-N (or pass --runtime)" ;;
  esac
}

# Print and run a command (only print with --dry-run).
run() {
  echo "+ $*" >&2
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

project_flag() { if [[ -n "$PROJECT" ]]; then echo "--project=$PROJECT"; fi; }

# Run a shell command on every worker of the slice (the same command everywhere).
on_all_workers() {
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $(project_flag) --worker=all --command="$1"
}

# Run a shell command on one worker (default 0).
on_worker() {
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $(project_flag) --worker="$1" --command="$2"
}

# READY, CREATING, PREEMPTED, ... or NOT_FOUND.
tpu_state() {
  # shellcheck disable=SC2046
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $(project_flag) --format='value(state)' 2>/dev/null \
    || echo NOT_FOUND
}

# Block until the TPU VM is READY (queued resources may wait for capacity), or fail on a terminal state.
wait_ready() {
  local state
  for _ in $(seq 1 720); do
    state="$(tpu_state)"
    case "$state" in
      READY) echo "TPU $TPU_NAME is READY" >&2; return 0 ;;
      PREEMPTED|TERMINATED) die "TPU $TPU_NAME is $state; run tpu/resume.sh to recreate it and continue the run" ;;
    esac
    echo "waiting for $TPU_NAME (state: ${state:-unknown}) ..." >&2
    sleep 30
  done
  die "TPU $TPU_NAME not READY after 6 hours"
}
