#!/bin/bash
# nascloud instance bootstrap: cloud-init user-data on AWS, the startup-script on GCP, and what the local
# provider's group runs for every host. The group's template writes the NASCLOUD_* values on the lines
# right after the shebang:
#   NASCLOUD_CLOUD (aws|gcp|local), NASCLOUD_JOB_ID, NASCLOUD_GROUP, NASCLOUD_JOB_URL, NASCLOUD_REGION,
#   NASCLOUD_ROOT (the instance's own folder), NASCLOUD_GPU (empty: CPU only), NASCLOUD_SSH (1: opt-in SSH),
#   NASCLOUD_PYTHON (a Python with nascloud installed: local, or an image prepared for it).
# It prepares nascloud (clouds: the exact wheel from the bundle) and then becomes the instance's governor,
# `nascloud instance`, which records the instance in the bucket's ledger, checks the budget before
# anything slow, runs the agent under supervision and, at the end, sets the group to 0 and powers off.
# Nothing is started over SSH. Its log is the provider's console (bootstrap.log, and stdout).
set -uo pipefail

: "${NASCLOUD_CLOUD:?}" "${NASCLOUD_ROOT:?}" "${NASCLOUD_JOB_URL:?}" "${NASCLOUD_JOB_ID:?}" "${NASCLOUD_GROUP:?}"
export NASCLOUD_CLOUD NASCLOUD_ROOT NASCLOUD_JOB_URL NASCLOUD_JOB_ID NASCLOUD_GROUP
export NASCLOUD_REGION="${NASCLOUD_REGION:-}" NASCLOUD_GPU="${NASCLOUD_GPU:-}" NASCLOUD_SSH="${NASCLOUD_SSH:-}"
export NASCLOUD_LOCAL_ROOT="${NASCLOUD_LOCAL_ROOT:-}"
mkdir -p "$NASCLOUD_ROOT"
exec > >(tee -a "$NASCLOUD_ROOT/bootstrap.log") 2>&1

log() { echo "$(date -u +%FT%TZ) nascloud bootstrap: $*"; }
power_off() {
  if [ -n "${NASCLOUD_POWEROFF_COMMAND:-}" ]; then
    eval "$NASCLOUD_POWEROFF_COMMAND"
  elif [ "$NASCLOUD_CLOUD" != local ]; then
    shutdown -h now
  fi
  exit 1
}
fail() {
  # Before the governor runs there is no nascloud to resize the group with: say why on the console (what
  # an observer reads) and power off. The governor's own failures end the group from Python.
  log "FAILED: $*"
  echo "$*" >"$NASCLOUD_ROOT/failed"
  power_off
}

check_gpu() {
  if [ -z "$NASCLOUD_GPU" ]; then
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
  NASCLOUD_PYTHON="$NASCLOUD_ROOT/venv/bin/python"
  log "installed $(basename "$wheel") with the search extra"
}

log "boot on $NASCLOUD_CLOUD for job $NASCLOUD_JOB_ID, group $NASCLOUD_GROUP"
check_gpu
if [ -z "${NASCLOUD_PYTHON:-}" ]; then
  fetch_wheel
  make_venv
fi
"$NASCLOUD_PYTHON" -c "import nascloud" || fail "nascloud does not import with $NASCLOUD_PYTHON"
export NASCLOUD_PYTHON
log "starting the instance's governor"
exec "$NASCLOUD_PYTHON" -m nascloud instance
