#!/bin/bash
# nascloud instance bootstrap: cloud-init user-data on AWS, the startup-script on GCP, and run directly by
# the local provider. Launch writes the NASCLOUD_* values on the lines right after the shebang:
#   NASCLOUD_CLOUD (aws|gcp|local), NASCLOUD_ROOT, NASCLOUD_JOB_URL, NASCLOUD_GPU (empty: CPU only),
#   NASCLOUD_HOST_KEY_B64 (the SSH host key the orchestrator pins), NASCLOUD_PYTHON (local only).
# Outcome: $NASCLOUD_ROOT/ready, which the orchestrator waits for over SSH, or $NASCLOUD_ROOT/failed
# holding the reason. The agent itself is started later by the orchestrator, over SSH.
set -uo pipefail

: "${NASCLOUD_CLOUD:?}" "${NASCLOUD_ROOT:?}"
NASCLOUD_SSH_DIR="${NASCLOUD_SSH_DIR:-/etc/ssh}"
mkdir -p "$NASCLOUD_ROOT"
exec >>"$NASCLOUD_ROOT/bootstrap.log" 2>&1

log() { echo "$(date -u +%FT%TZ) $*"; }
fail() {
  log "FAILED: $*"
  echo "$*" >"$NASCLOUD_ROOT/failed"
  exit 1
}

# GCP runs the startup script at every boot: a machine already prepared stays as it is.
if [ -f "$NASCLOUD_ROOT/ready" ]; then
  log "already bootstrapped"
  exit 0
fi

install_host_key() {
  # The orchestrator generated this key and pins it, so the first SSH connection is already verified.
  [ -n "${NASCLOUD_HOST_KEY_B64:-}" ] || return 0
  local key="$NASCLOUD_SSH_DIR/ssh_host_ed25519_key"
  (umask 077 && echo "$NASCLOUD_HOST_KEY_B64" | base64 -d >"$key.new") || fail "the host key given at launch is not base64"
  mv "$key.new" "$key"
  ssh-keygen -y -f "$key" >"$key.pub" || fail "the host key given at launch is not an SSH key"
  systemctl restart ssh 2>/dev/null || systemctl restart sshd || fail "could not restart sshd with the pinned host key"
  log "host key installed"
}

check_gpu() {
  if [ -z "${NASCLOUD_GPU:-}" ]; then
    log "no GPU requested"
    return 0
  fi
  # Deep learning images may still be loading the driver on first boot: give it five minutes.
  local tries=30
  [ "$NASCLOUD_CLOUD" = local ] && tries=1
  for _ in $(seq 1 "$tries"); do
    if command -v nvidia-smi >/dev/null && nvidia-smi -L; then
      log "GPU driver works"
      return 0
    fi
    [ "$tries" -gt 1 ] && sleep 10
  done
  if [ "$NASCLOUD_CLOUD" = local ]; then
    log "no NVIDIA GPU here: the search runs on the CPU"
    return 0
  fi
  fail "no working NVIDIA driver for the $NASCLOUD_GPU GPU (nvidia-smi failed); use a GPU image (compute.image)"
}

fetch_wheel() {
  # Launch uploads this exact nascloud version (a development build is not on PyPI) to the bundle.
  local dest="$NASCLOUD_ROOT/bundle"
  mkdir -p "$dest"
  for _ in $(seq 1 30); do
    case "$NASCLOUD_CLOUD" in
      aws) aws s3 cp --recursive --exclude '*' --include '*.whl' "$NASCLOUD_JOB_URL/bundle/" "$dest/" ;;
      gcp) gcloud storage cp "$NASCLOUD_JOB_URL/bundle/*.whl" "$dest/" ;;
    esac
    if compgen -G "$dest/*.whl" >/dev/null; then
      return 0
    fi
    sleep 10
  done
  fail "no nascloud wheel under $NASCLOUD_JOB_URL/bundle/ after 5 minutes (launch uploads it; the instance identity must be allowed to read the job prefix)"
}

find_python() {
  # nascloud needs Python 3.10+; Debian 11 images have 3.9 as python3 and a newer one under /opt/conda.
  local candidate
  for candidate in python3 /opt/conda/bin/python3 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

make_venv() {
  local wheel python
  wheel=$(compgen -G "$NASCLOUD_ROOT/bundle/*.whl" | head -n 1)
  python=$(find_python) || fail "no Python 3.10 or newer on the image; use another image (compute.image)"
  if ! "$python" -m venv "$NASCLOUD_ROOT/venv"; then
    # Ubuntu ships venv apart from Python.
    apt-get install -y -q python3-venv && "$python" -m venv "$NASCLOUD_ROOT/venv" ||
      fail "$python -m venv failed (the image needs python3-venv)"
  fi
  "$NASCLOUD_ROOT/venv/bin/pip" install --quiet "${wheel}[search]" || fail "pip install $(basename "$wheel")[search] failed"
  "$NASCLOUD_ROOT/venv/bin/python" -c "import nascloud" || fail "nascloud does not import in $NASCLOUD_ROOT/venv"
  log "installed $(basename "$wheel") with the search extra"
}

log "bootstrap on $NASCLOUD_CLOUD"
case "$NASCLOUD_CLOUD" in
  aws | gcp)
    install_host_key
    check_gpu
    fetch_wheel
    make_venv
    ;;
  local)
    # A local instance reuses the Python environment nascloud runs in: nothing to install.
    check_gpu
    "${NASCLOUD_PYTHON:?}" -c "import nascloud" || fail "nascloud does not import with $NASCLOUD_PYTHON"
    ;;
  *) fail "unknown cloud $NASCLOUD_CLOUD" ;;
esac
date -u +%s >"$NASCLOUD_ROOT/ready"
log "ready"
