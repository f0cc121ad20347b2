#!/usr/bin/env bash
# Stop a run on every worker (SIGTERM: the trainer saves a checkpoint before it exits).
#   tpu/stop.sh --name NAME --zone ZONE --run r1
source "$(dirname "$0")/common.sh"
parse_common "$@"
RUN=""
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --run) RUN="$2"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n "$RUN" ]] || die "--run is required"
on_all_workers "if [ -f ~/$LOG_DIR/$RUN.pid ]; then kill -TERM -- -\$(cat ~/$LOG_DIR/$RUN.pid) 2>/dev/null || kill -TERM \$(cat ~/$LOG_DIR/$RUN.pid) 2>/dev/null; rm -f ~/$LOG_DIR/$RUN.pid; echo stopped on \$(hostname); fi"
