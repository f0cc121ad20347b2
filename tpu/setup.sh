#!/usr/bin/env bash
# Install the code and its dependencies on every worker of the slice.
#   tpu/setup.sh --name NAME --zone ZONE [--git URL [--ref REF]] [--bucket BUCKET] [--model gs://.../Llama-3.1-8B-Instruct]
# Code: by default this checkout's tracked files (git ls-files) are copied to ~/$REMOTE_DIR on
# every worker; with --git, every worker clones/pulls URL at REF instead.
# Deps: requirements.txt without torch (only the parity tests need it), jax[tpu] (pulls the
# matching libtpu) and the package itself. --bucket mounts gs://BUCKET at $MOUNT with gcsfuse
# on every worker, so every host sees the same --workdir (Orbax writes each host's shards there).
# --model copies an HF model directory to /mnt/models/<name> on every worker.
source "$(dirname "$0")/common.sh"
parse_common "$@"
GIT_URL=""; GIT_REF="main"; MODEL=""
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --git) GIT_URL="$2"; shift 2 ;;
    --ref) GIT_REF="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
JAX_VERSION="$(grep -E '^jax==' "$(dirname "$0")/../requirements.txt" | cut -d= -f3)"
[[ -n "$JAX_VERSION" ]] || die "requirements.txt pins no jax==VERSION; pin it so workers match this checkout"

if [[ -n "$GIT_URL" ]]; then
  on_all_workers "set -e; if [ -d ~/$REMOTE_DIR/.git ]; then cd ~/$REMOTE_DIR && git fetch -q origin && git checkout -q $GIT_REF && git pull -q --ff-only || true; else git clone -q $GIT_URL ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && git checkout -q $GIT_REF; fi"
else
  root="$(cd "$(dirname "$0")/.." && pwd)"
  tarball="$(mktemp -d)/pilotrl_jax.tar.gz"
  (cd "$root" && git ls-files -z | tar --null -czf "$tarball" -T -)
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/pilotrl_jax.tar.gz" --zone="$ZONE" $(project_flag) --worker=all
  on_all_workers "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/pilotrl_jax.tar.gz -C ~/$REMOTE_DIR"
fi

on_all_workers "set -e; cd ~/$REMOTE_DIR; sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv default-jre-headless >/dev/null; \
python3 -m venv .venv; .venv/bin/pip install -q --upgrade pip; \
grep -v '^torch' requirements.txt > /tmp/req_tpu.txt; .venv/bin/pip install -q -r /tmp/req_tpu.txt; \
.venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION'; .venv/bin/pip install -q --no-deps -e .; mkdir -p ~/$LOG_DIR; \
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"

if [[ -n "$GCS_BUCKET" ]]; then
  on_all_workers "set -e; if ! command -v gcsfuse >/dev/null; then \
export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s); echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - >/dev/null; sudo apt-get -qq update; sudo apt-get -qq install -y gcsfuse >/dev/null; fi; \
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT; mountpoint -q $MOUNT || gcsfuse --implicit-dirs $GCS_BUCKET $MOUNT"
fi

if [[ -n "$MODEL" ]]; then
  on_all_workers "set -e; sudo mkdir -p /mnt/models && sudo chown \$USER /mnt/models; gcloud storage cp -r $MODEL /mnt/models/"
fi
