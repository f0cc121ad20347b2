#!/usr/bin/env bash
# Delete the slice (and its queued resource). Checkpoints in the gcsfuse workdir stay in the bucket.
#   tpu/teardown.sh --name NAME --zone ZONE [--queued]
source "$(dirname "$0")/common.sh"
parse_common "$@"
[[ ${#REST[@]} -eq 0 ]] || die "unknown arguments: ${REST[*]} (see the header of $0)"
if [[ "$QUEUED" == 1 ]]; then
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources delete "$TPU_NAME-qr" --zone="$ZONE" $(project_flag) --force --quiet
else
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $(project_flag) --quiet
fi
