#!/usr/bin/env bash
# Follow a run's log on one worker (default 0, the one that logs metrics), or print the tail of all.
#   tpu/logs.sh --name NAME --zone ZONE --run r1 [--worker 2 | --all]
source "$(dirname "$0")/common.sh"
parse_common "$@"
RUN=""; WORKER=0; ALL=0
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --run) RUN="$2"; shift 2 ;;
    --worker) WORKER="$2"; shift 2 ;;
    --all) ALL=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n "$RUN" ]] || die "--run is required (the workdir's basename given to tpu/launch.sh)"
if [[ "$ALL" == 1 ]]; then
  on_all_workers "echo == \$(hostname); tail -n 20 ~/$LOG_DIR/$RUN.log"
else
  on_worker "$WORKER" "tail -n 100 -F ~/$LOG_DIR/$RUN.log"
fi
