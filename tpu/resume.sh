#!/usr/bin/env bash
# Continue a run after a preemption: recreate the slice if it is gone or PREEMPTED, install, and
# rerun the same train command with the same --workdir (the trainer resumes from its checkpoint).
#   tpu/resume.sh --name NAME --zone ZONE --type v5p-32 [--spot] [--queued] [--bucket B] [--model gs://...] \
#                 --config configs/tpu_llama31_8b.py --workdir /mnt/gcs/runs/r1 [-- extra trainer flags]
source "$(dirname "$0")/common.sh"
here="$(dirname "$0")"
parse_common "$@"
CONFIG=""; WORKDIR=""; MODEL=""; EXTRA=()
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n "$CONFIG" && -n "$WORKDIR" ]] || die "--config and --workdir are required (the ones the run started with)"
common=(--name "$TPU_NAME" --zone "$ZONE" --type "$ACCELERATOR")
[[ -z "$PROJECT" ]] || common+=(--project "$PROJECT")
[[ -z "$RUNTIME" ]] || common+=(--runtime "$RUNTIME")
[[ "$DRY_RUN" != 1 ]] || common+=(--dry-run)
state="$(tpu_state)"
echo "TPU $TPU_NAME state: $state" >&2
fresh=0
case "$state" in
  READY) ;;
  PREEMPTED|TERMINATED)
    "$here/teardown.sh" "${common[@]}" $([[ "$QUEUED" == 1 ]] && echo --queued)
    fresh=1 ;;
  NOT_FOUND) fresh=1 ;;
  *) wait_ready ;;
esac
if [[ "$fresh" == 1 ]]; then
  create=("${common[@]}")
  [[ "$SPOT" != 1 ]] || create+=(--spot)
  [[ "$QUEUED" != 1 ]] || create+=(--queued)
  "$here/create.sh" "${create[@]}"
  setup=("${common[@]}")
  [[ -z "$GCS_BUCKET" ]] || setup+=(--bucket "$GCS_BUCKET")
  [[ -z "$MODEL" ]] || setup+=(--model "$MODEL")
  "$here/setup.sh" "${setup[@]}"
fi
"$here/launch.sh" "${common[@]}" --config "$CONFIG" --workdir "$WORKDIR" -- "${EXTRA[@]+"${EXTRA[@]}"}"
