#!/usr/bin/env bash
# Create a TPU VM slice (v4, v5e, v5p, v6e), directly or as a queued resource, optionally spot.
#   tpu/create.sh --name pilotrl-v5p-32 --zone us-east5-a --type v5p-32 [--spot] [--queued] [--project P]
source "$(dirname "$0")/common.sh"
parse_common "$@"
[[ ${#REST[@]} -eq 0 ]] || die "unknown arguments: ${REST[*]} (see the header of $0)"
RUNTIME="${RUNTIME:-$(default_runtime "$ACCELERATOR")}"
spot=()
if [[ "$SPOT" == 1 ]]; then spot=(--spot); fi
if [[ "$QUEUED" == 1 ]]; then
  # A queued resource waits for capacity and provisions the node when it can.
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources create "$TPU_NAME-qr" --node-id="$TPU_NAME" --zone="$ZONE" \
    $(project_flag) --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}"
else
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $(project_flag) \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
fi
if [[ "$DRY_RUN" != 1 ]]; then wait_ready; fi
