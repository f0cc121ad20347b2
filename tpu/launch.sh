#!/usr/bin/env bash
# Start the same training command on every worker (in the background; logs on each worker).
#   tpu/launch.sh --name NAME --zone ZONE --config configs/tpu_llama31_8b.py --workdir /mnt/gcs/runs/r1 [-- --config.x=y ...]
# Every worker runs: python -m pilotrl_jax.train --config CONFIG --workdir WORKDIR [extra flags]
# (jax.distributed finds the other workers by itself on a TPU slice). The workdir must be the same
# path on every worker (a gcsfuse mount from tpu/setup.sh --bucket): rerunning this script with the
# same --workdir resumes from the latest checkpoint there.
source "$(dirname "$0")/common.sh"
parse_common "$@"
CONFIG=""; WORKDIR=""; RUN=""; EXTRA=()
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --run) RUN="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (extra trainer flags go after --)" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config is required (e.g. configs/tpu_llama31_8b.py)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (the same path on every worker, e.g. $MOUNT/runs/r1)"
RUN="${RUN:-$(basename "$WORKDIR")}"
cmd=".venv/bin/python -m pilotrl_jax.train --config $CONFIG --workdir $WORKDIR ${EXTRA[*]+"${EXTRA[*]}"}"
on_all_workers "set -e; cd ~/$REMOTE_DIR; mkdir -p ~/$LOG_DIR; \
if [ -f ~/$LOG_DIR/$RUN.pid ] && kill -0 \$(cat ~/$LOG_DIR/$RUN.pid) 2>/dev/null; then echo 'already running'; exit 0; fi; \
echo \"\$(date -u +%FT%TZ) start: $cmd\" >> ~/$LOG_DIR/$RUN.log; \
nohup setsid $cmd >> ~/$LOG_DIR/$RUN.log 2>&1 < /dev/null & echo \$! > ~/$LOG_DIR/$RUN.pid; echo started \$(hostname)"
echo "follow with: tpu/logs.sh --name $TPU_NAME --zone $ZONE --run $RUN" >&2
