#!/bin/bash
# nascloud instance bootstrap: cloud-init user-data on AWS, the startup-script on GCP, and what the local
# provider's group runs for every host. The group's template writes the NASCLOUD_* values on the lines
# right after the shebang:
#   NASCLOUD_CLOUD (aws|gcp|local), NASCLOUD_JOB_ID, NASCLOUD_GROUP, NASCLOUD_JOB_URL, NASCLOUD_REGION,
#   NASCLOUD_ROOT (the instance's own folder), NASCLOUD_GPU (empty: CPU only), NASCLOUD_SSH (1: opt-in SSH),
#   NASCLOUD_PYTHON (a Python with nascloud installed: local, or an image prepared for it),
#   NASCLOUD_EXTRAS (the wheel's extras to install; default search: what the agent needs to train),
#   NASCLOUD_GROUPS (every group of the job, space-separated: a failed boot ends them all).
# It prepares nascloud (clouds: the exact wheel from the bundle) and then runs the instance's governor,
# `nascloud instance`, which records the instance in the bucket's ledger, checks the budget before
# anything slow, runs the agent under supervision and, at the end, sets the group to 0 and powers off.
# Nothing is started over SSH. Its log is the provider's console (bootstrap.log, and stdout).
#
# A boot that fails before the governor ends the job (the breaker): an Auto Scaling group or a managed
# instance group replaces a machine that powers off, so a boot that failed and only powered off would boot
# a new GPU that fails the same way, without end. So a failed boot records its reason in the bucket
# (boots/<group>/<instance>.json: `status` shows it, the budget bills it), sets every group of the job to
# 0 with the instance's own identity (after the record: the resize ends this machine), and powers off no
# sooner than a billing minimum after it began. A boot that finds BOOT_FAILURE_LIMIT failed boots of its group already
# recorded ends the groups before doing anything else. When the identity itself is refused, the launch's
# backstop (set with the launcher's credentials) ends the group when the budget runs out at its price.
set -uo pipefail

: "${NASCLOUD_CLOUD:?}" "${NASCLOUD_ROOT:?}" "${NASCLOUD_JOB_URL:?}" "${NASCLOUD_JOB_ID:?}" "${NASCLOUD_GROUP:?}"
export NASCLOUD_CLOUD NASCLOUD_ROOT NASCLOUD_JOB_URL NASCLOUD_JOB_ID NASCLOUD_GROUP
export NASCLOUD_REGION="${NASCLOUD_REGION:-}" NASCLOUD_GPU="${NASCLOUD_GPU:-}" NASCLOUD_SSH="${NASCLOUD_SSH:-}"
export NASCLOUD_LOCAL_ROOT="${NASCLOUD_LOCAL_ROOT:-}"
NASCLOUD_EXTRAS="${NASCLOUD_EXTRAS-search}"
NASCLOUD_GROUPS="${NASCLOUD_GROUPS:-$NASCLOUD_GROUP}"
# What a fresh machine may still be preparing (the GPU driver, the wheel launch uploads) is waited for
# BOOT_TRIES times BOOT_WAIT_SECONDS (five minutes); a test of each failure sets them to seconds.
BOOT_TRIES="${NASCLOUD_BOOT_TRIES:-30}" BOOT_WAIT_SECONDS="${NASCLOUD_BOOT_WAIT_SECONDS:-10}"
# AWS and GCP bill every instance at least 60 s: a failed boot that lives that long costs no more, and a
# loop of them then bills at most the group's price per hour, the rate the launch's backstop assumes. The
# local supervisor paces its hosts itself.
BOOT_MINIMUM_SECONDS="${NASCLOUD_BOOT_MINIMUM_SECONDS:-$([ "$NASCLOUD_CLOUD" = local ] && echo 0 || echo 60)}"
BOOT_FAILURE_LIMIT=3
BOOTED_AT=$(date +%s)
mkdir -p "$NASCLOUD_ROOT"
exec > >(tee -a "$NASCLOUD_ROOT/bootstrap.log") 2>&1

log() { echo "$(date -u +%FT%TZ) nascloud bootstrap: $*"; }
json_string() {  # TEXT as a JSON string (our messages: quotes, backslashes and line breaks to escape)
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\n'/ }
  printf '"%s"' "${text//$'\t'/ }"
}
power_off() {
  if [ -n "${NASCLOUD_POWEROFF_COMMAND:-}" ]; then
    eval "$NASCLOUD_POWEROFF_COMMAND"
  elif [ "$NASCLOUD_CLOUD" != local ]; then
    shutdown -h now
  fi
  exit 1
}
fail() {
  # The breaker (see the top): the reason in the bucket (a second's work), the groups to 0 (which ends
  # this machine on the clouds: nothing after it is sure to run), then power off once a billing minimum has
  # passed. On local the group's supervisor reads `failed` when the host ends and ends its group itself.
  log "FAILED: $*"
  echo "$*" >"$NASCLOUD_ROOT/failed"
  record_failed_boot "$*"
  end_groups "instance $INSTANCE_ID failed: $*"
  local left=$((BOOTED_AT + BOOT_MINIMUM_SECONDS - $(date +%s)))
  [ "$left" -gt 0 ] && sleep "$left"
  power_off
}

check_gpu() {
  if [ -z "$NASCLOUD_GPU" ]; then
    log "no GPU requested"
    return 0
  fi
  # Deep learning images may still be loading the driver on first boot: give it five minutes.
  local tries=$BOOT_TRIES
  [ "$NASCLOUD_CLOUD" = local ] && tries=1
  for _ in $(seq 1 "$tries"); do
    # `nvidia-smi -L` lists the devices: no line starting with GPU is a driver that sees no device.
    if command -v nvidia-smi >/dev/null && nvidia-smi -L | grep -q '^GPU'; then
      log "GPU driver works"
      return 0
    fi
    [ "$tries" -gt 1 ] && sleep "$BOOT_WAIT_SECONDS"
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
GCE_API="${NASCLOUD_GCE_ENDPOINT:-https://compute.googleapis.com}"
AWS_METADATA="${NASCLOUD_AWS_METADATA_URL:-http://169.254.169.254}"
LOCAL_JOB="${NASCLOUD_JOB_URL#file://}"
gcs_path="${NASCLOUD_JOB_URL#gs://}"
GCS_BUCKET="${gcs_path%%/*}" GCS_PREFIX="${gcs_path#*/}"
# An object's name in a URL path: our names have only [A-Za-z0-9._+/-], of which / and + need escaping.
gcs_name() { local name="$GCS_PREFIX/$1"; name="${name//\//%2F}"; echo "${name//+/%2B}"; }
gce_metadata() { curl -fsS -m 5 -H "Metadata-Flavor: Google" "$GCE_METADATA/$1"; }
gcs() {  # curl ARGS... with the VM's service account token; fails without one (a VM with no service account)
  local token
  token=$(gce_metadata instance/service-accounts/default/token |
    sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p') && [ -n "$token" ] || return 1
  curl -fsS -H "Authorization: Bearer $token" "$@"
}
get_object() {  # KEY (under the job's prefix) DEST: fails quietly when there is no such object
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 cp --quiet "$NASCLOUD_JOB_URL/$1" "$2" 2>/dev/null ;;
    gcp) gcs -o "$2" "$GCS/storage/v1/b/$GCS_BUCKET/o/$(gcs_name "$1")?alt=media" 2>/dev/null ||
           { rm -f "$2"; return 1; } ;;
    local) cp "$LOCAL_JOB/$1" "$2" 2>/dev/null ;;
  esac
}
put_object() {  # FILE KEY, streamed (a wheelhouse is gigabytes)
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 cp --quiet $AWS_QUICK "$1" "$NASCLOUD_JOB_URL/$2" ;;
    gcp) gcs -o /dev/null -X POST -T "$1" -H "Content-Type: application/octet-stream" \
           "$GCS/upload/storage/v1/b/$GCS_BUCKET/o?uploadType=media&name=$(gcs_name "$2")" ;;
    local) mkdir -p "$(dirname "$LOCAL_JOB/$2")" && cp "$1" "$LOCAL_JOB/$2.tmp-$$" && mv "$LOCAL_JOB/$2.tmp-$$" "$LOCAL_JOB/$2" ;;
  esac
}
list_objects() {  # PREFIX (a folder under the job's prefix, ending in /): the names of the objects in it
  case "$NASCLOUD_CLOUD" in
    aws) aws s3 ls "$NASCLOUD_JOB_URL/$1" | awk '{print $NF}' ;;
    gcp) gcs "$GCS/storage/v1/b/$GCS_BUCKET/o?prefix=$(gcs_name "$1")&delimiter=%2F&fields=items(name)" |
           grep -o '"name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/; s#.*/##' ;;
    local) ls "$LOCAL_JOB/$1" 2>/dev/null ;;
  esac
}
bundle_wheels() { list_objects bundle/ | grep '\.whl$'; }

instance_id() {  # this machine's id, as the provider and the ledger name it
  case "$NASCLOUD_CLOUD" in
    aws) local token
         token=$(curl -fsS -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$AWS_METADATA/latest/api/token") &&
           curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$AWS_METADATA/latest/meta-data/instance-id" ;;
    gcp) gce_metadata instance/id ;;
    local) echo "${NASCLOUD_LOCAL_INSTANCE:?}" ;;
  esac
}
INSTANCE_ID=$(instance_id) || INSTANCE_ID="unknown-$BOOTED_AT-$RANDOM"  # no metadata: still a record of its own

# The breaker's calls wait seconds, not the CLI's minutes: what they delay is billed.
AWS_QUICK="--cli-connect-timeout 10 --cli-read-timeout 20 ${NASCLOUD_REGION:+--region $NASCLOUD_REGION}"
resize_to_zero() {  # GROUP REASON, with the instance's own identity (the README lists what it may do); the
  # reason goes first: the resize ends this machine at once (AWS terminates it; GCP deletes it), and the
  # reason is what tells the user why.
  local name="nascloud-$NASCLOUD_JOB_ID-$1" token project
  case "$NASCLOUD_CLOUD" in
    aws) aws autoscaling create-or-update-tags $AWS_QUICK --tags \
           "[{\"ResourceId\": \"$name\", \"ResourceType\": \"auto-scaling-group\", \"Key\": \"nascloud-reason\",
              \"Value\": $(json_string "${2:0:250}"), \"PropagateAtLaunch\": false}]"
         aws autoscaling set-desired-capacity $AWS_QUICK --auto-scaling-group-name "$name" --desired-capacity 0 \
           --no-honor-cooldown ;;
    gcp) project=$(gce_metadata project/project-id) || return 1
         local group="$GCE_API/compute/v1/projects/$project/regions/$NASCLOUD_REGION/instanceGroupManagers/$name"
         gcs -m 20 -o /dev/null -X PATCH -H "Content-Type: application/json" \
           -d "{\"description\": $(json_string "${2:0:2000}")}" "$group"
         gcs -m 20 -o /dev/null -X POST "$group/resize?size=0" ;;
    local) [ "$1" = "$NASCLOUD_GROUP" ] ||  # this host's supervisor ends its own group once the host has ended
           printf '%s\n' "$2" >"$NASCLOUD_LOCAL_ROOT/groups/$NASCLOUD_JOB_ID/$1/halt" ;;
  esac
}
end_groups() {  # REASON: every group of the job to 0
  local group
  for group in $NASCLOUD_GROUPS; do
    if resize_to_zero "$group" "$1"; then
      log "set group $group to 0"
    else
      log "could not set group $group to 0 with this instance's identity (the launch's backstop bounds the spend)"
    fi
  done
}
record_failed_boot() {  # REASON: where the next boot counts it, `status` shows it and the budget bills it
  local record="$NASCLOUD_ROOT/failed-boot.json"
  printf '{"instance_id": %s, "group": %s, "booted_at": %s, "failed_at": %s, "reason": %s}\n' \
    "$(json_string "$INSTANCE_ID")" "$(json_string "$NASCLOUD_GROUP")" "$BOOTED_AT" "$(date +%s)" \
    "$(json_string "$1")" >"$record"
  put_object "$record" "boots/$NASCLOUD_GROUP/$INSTANCE_ID.json" || log "could not record the failed boot in the bucket"
}
check_breaker() {
  local failed
  failed=$(list_objects "boots/$NASCLOUD_GROUP/" 2>/dev/null | grep -c '\.json$')
  if [ "${failed:-0}" -ge "$BOOT_FAILURE_LIMIT" ]; then
    fail "the breaker is open: $failed boots of group $NASCLOUD_GROUP failed before this one (their reasons: \`nascloud status\`); fix the cause, then \`nascloud resume\`"
  fi
}

fetch_wheel() {
  # Launch uploads this exact nascloud version (a development build is not on PyPI) to the bundle.
  local dest="$NASCLOUD_ROOT/bundle" wheel
  mkdir -p "$dest"
  for _ in $(seq 1 "$BOOT_TRIES"); do
    for wheel in $(bundle_wheels); do
      get_object "bundle/$wheel" "$dest/$wheel"
    done
    if compgen -G "$dest/*.whl" >/dev/null; then
      return 0
    fi
    sleep "$BOOT_WAIT_SECONDS"
  done
  fail "no nascloud wheel under $NASCLOUD_JOB_URL/bundle/ after $((BOOT_TRIES * BOOT_WAIT_SECONDS)) s (launch uploads it; the instance identity must be allowed to read the job prefix)"
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

log "boot of $INSTANCE_ID on $NASCLOUD_CLOUD for job $NASCLOUD_JOB_ID, group $NASCLOUD_GROUP"
check_breaker
check_gpu
if [ -z "${NASCLOUD_PYTHON:-}" ]; then
  fetch_wheel
  make_venv
fi
"$NASCLOUD_PYTHON" -c "import nascloud" || fail "nascloud does not import with $NASCLOUD_PYTHON"
export NASCLOUD_PYTHON NASCLOUD_GROUPS
log "starting the instance's governor"
# The governor powers the machine off at every end it reaches; an exit is a failure before that, whose
# reason it wrote to governor-failed.
"$NASCLOUD_PYTHON" -m nascloud instance
code=$?
[ "$code" -eq 0 ] && exit 0
fail "$(cat "$NASCLOUD_ROOT/governor-failed" 2>/dev/null || echo "the instance's governor exited with code $code")"
