#!/bin/bash
# nascloud instance bootstrap: cloud-init user-data on AWS, the startup-script on GCP, and what the local
# provider's group runs for every host. The group's template writes the NASCLOUD_* values on the lines
# right after the shebang:
#   NASCLOUD_CLOUD (aws|gcp|local), NASCLOUD_JOB_ID, NASCLOUD_GROUP, NASCLOUD_JOB_URL, NASCLOUD_REGION,
#   NASCLOUD_ROOT (the instance's own folder), NASCLOUD_GPU (empty: CPU only), NASCLOUD_SSH (1: opt-in SSH),
#   NASCLOUD_PYTHON (a Python with nascloud installed: local, or an image prepared for it),
#   NASCLOUD_EXTRAS (the wheel's extras to install; default search: what the agent needs to train).
# It prepares nascloud (clouds: the exact wheel from the bundle) and then becomes the instance's governor,
# `nascloud instance`, which records the instance in the bucket's ledger, checks the budget before
# anything slow, runs the agent under supervision and, at the end, sets the group to 0 and powers off.
# Nothing is started over SSH. Its log is the provider's console (bootstrap.log, and stdout).
set -uo pipefail

: "${NASCLOUD_CLOUD:?}" "${NASCLOUD_ROOT:?}" "${NASCLOUD_JOB_URL:?}" "${NASCLOUD_JOB_ID:?}" "${NASCLOUD_GROUP:?}"
export NASCLOUD_CLOUD NASCLOUD_ROOT NASCLOUD_JOB_URL NASCLOUD_JOB_ID NASCLOUD_GROUP
export NASCLOUD_REGION="${NASCLOUD_REGION:-}" NASCLOUD_GPU="${NASCLOUD_GPU:-}" NASCLOUD_SSH="${NASCLOUD_SSH:-}"
export NASCLOUD_LOCAL_ROOT="${NASCLOUD_LOCAL_ROOT:-}"
NASCLOUD_EXTRAS="${NASCLOUD_EXTRAS-search}"
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

# The bucket, with the instance's own identity. AWS: the Deep Learning AMI's `aws` CLI. GCP: the JSON API
# with the metadata server's token and curl, not gcloud (absent on some images); STORAGE_EMULATOR_HOST points
# it at another endpoint, as the Python client does (the tests' fake-gcs-server).
GCS="${STORAGE_EMULATOR_HOST:-https://storage.googleapis.com}"
GCE_METADATA="${NASCLOUD_GCE_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
gcs_path="${NASCLOUD_JOB_URL#gs://}"
GCS_BUCKET="${gcs_path%%/*}" GCS_PREFIX="${gcs_path#*/}"
# An object's name in a URL path: our names have only [A-Za-z0-9._+/-], of which / and + need escaping.
gcs_name() { local name="$GCS_PREFIX/$1"; name="${name//\//%2F}"; echo "${name//+/%2B}"; }
gcs() {  # curl ARGS... with the VM's service account token; fails without one (a VM with no service account)
  local token
  token=$(curl -fsS -H "Metadata-Flavor: Google" "$GCE_METADATA/instance/service-accounts/default/token" |
    sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p') && [ -n "$token" ] || return 1
  curl -fsS -H "Authorization: Bearer $token" "$@"
}
get_object() {  # KEY (under the job's prefix) DEST: fails quietly when there is no such object
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 cp --quiet "$NASCLOUD_JOB_URL/$1" "$2" 2>/dev/null ;;
    gcp) gcs -o "$2" "$GCS/storage/v1/b/$GCS_BUCKET/o/$(gcs_name "$1")?alt=media" 2>/dev/null ||
           { rm -f "$2"; return 1; } ;;
  esac
}
put_object() {  # FILE KEY, streamed (a wheelhouse is gigabytes)
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 cp --quiet "$1" "$NASCLOUD_JOB_URL/$2" ;;
    gcp) gcs -o /dev/null -X POST -T "$1" -H "Content-Type: application/octet-stream" \
           "$GCS/upload/storage/v1/b/$GCS_BUCKET/o?uploadType=media&name=$(gcs_name "$2")" ;;
  esac
}
bundle_wheels() {  # the names of the bundle's wheels
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 ls "$NASCLOUD_JOB_URL/bundle/" | awk '{print $NF}' | grep '\.whl$' ;;
    gcp) gcs "$GCS/storage/v1/b/$GCS_BUCKET/o?prefix=$(gcs_name bundle/)&delimiter=%2F&fields=items(name)" |
           grep -o '"name": *"[^"]*\.whl"' | sed 's/.*"\([^"]*\)"$/\1/; s#.*/##' ;;
  esac
}

fetch_wheel() {
  # Launch uploads this exact nascloud version (a development build is not on PyPI) to the bundle.
  local dest="$NASCLOUD_ROOT/bundle" wheel
  mkdir -p "$dest"
  for _ in $(seq 1 30); do
    for wheel in $(bundle_wheels); do
      get_object "bundle/$wheel" "$dest/$wheel"
    done
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
  # The install is most of a replacement's boot, which the estimate charges at every preemption: the first
  # boot builds a wheelhouse of everything it installs and uploads it beside the wheel, keyed by the wheel's
  # hash, the Python and the machine; later boots install from it without an index.
  local wheel python key flavor wheelhouse="$NASCLOUD_ROOT/wheelhouse" requirements
  wheel=$(compgen -G "$NASCLOUD_ROOT/bundle/*.whl" | head -n 1)
  python=$(find_python) || fail "no Python 3.10 or newer on the image; use another image (compute.image)"
  if ! "$python" -m venv "$NASCLOUD_ROOT/venv"; then
    # Ubuntu ships venv apart from Python.
    apt-get install -y -q python3-venv && "$python" -m venv "$NASCLOUD_ROOT/venv" ||
      fail "$python -m venv failed (the image needs python3-venv)"
  fi
  local pip="$NASCLOUD_ROOT/venv/bin/pip"
  requirements=("$wheel${NASCLOUD_EXTRAS:+[$NASCLOUD_EXTRAS]}") flavor=cpu
  if [ -n "$NASCLOUD_GPU" ]; then
    # TensorFlow's CUDA and cuDNN libraries as pip wheels: the default images bring only the driver.
    requirements+=("tensorflow[and-cuda]>=2.16") flavor=cuda
  fi
  key="bundle/wheelhouse/$(sha256sum "$wheel" | cut -c1-16)-$("$python" -c \
    'import platform, sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')-$flavor.tar"
  mkdir -p "$wheelhouse"
  if get_object "$key" "$NASCLOUD_ROOT/wheelhouse.tar" && tar -xf "$NASCLOUD_ROOT/wheelhouse.tar" -C "$wheelhouse" &&
    "$pip" install --quiet --no-index --find-links "$wheelhouse" "${requirements[@]}"; then
    log "installed $(basename "$wheel") from the bucket's wheelhouse"
  else
    "$pip" wheel --quiet --wheel-dir "$wheelhouse" "${requirements[@]}" &&
      "$pip" install --quiet --no-index --find-links "$wheelhouse" "${requirements[@]}" ||
      fail "pip install ${requirements[*]##*/} failed"
    log "installed $(basename "$wheel") from the index; uploading its wheelhouse for the next boots"
    # In the background: training need not wait for it, and a boot ended mid-upload leaves no object.
    (tar -cf "$NASCLOUD_ROOT/wheelhouse.tar" -C "$wheelhouse" . && put_object "$NASCLOUD_ROOT/wheelhouse.tar" "$key" &&
      log "wheelhouse uploaded to $key" || log "could not upload the wheelhouse to $key") &
  fi
  NASCLOUD_PYTHON="$NASCLOUD_ROOT/venv/bin/python"
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
