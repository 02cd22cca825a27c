#!/usr/bin/env bash
# Make this machine able to run the serving image, idempotently (each step is skipped when done):
#   1. a Docker engine: Debian's docker.io + dockerd in the background (log: /tmp/dockerd.log);
#   2. a local base image mlops-base:bookworm (debootstrap; no image registry is reachable here);
#   3. the serving image, built on that base (tools/build_serving_image.sh).
#
#   tools/docker_setup.sh [--no-serving-image]
#
# env: MLOPS_BASE_IMAGE (default mlops-base:bookworm), DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Needs root for steps 1 and 2 (they are skipped when an engine / the base image already exist).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${MLOPS_BASE_IMAGE:-mlops-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILD_SERVING=1
[[ "${1:-}" == "--no-serving-image" ]] && BUILD_SERVING=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)
say() { echo "[docker_setup] $*" >&2; }

# ---- 1. engine ----------------------------------------------------------------------------------
t=$(now)
if docker info >/dev/null 2>&1; then
    say "engine: already running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
else
    missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/docker_setup-apt.log 2>&1 || {
            apt-get update -q >>/tmp/docker_setup-apt.log 2>&1
            apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/docker_setup-apt.log 2>&1
        } || { say "apt-get install failed, see /tmp/docker_setup-apt.log"; exit 1; }
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        say "starting dockerd (log: /tmp/dockerd.log)"
        nohup setsid dockerd >>/tmp/dockerd.log 2>&1 </dev/null &
    fi
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { say "dockerd did not come up; tail of /tmp/dockerd.log:"; tail -20 /tmp/dockerd.log >&2; exit 1; }
    say "engine: up ($(docker version -f '{{.Server.Version}}'))"
fi
say "engine step: $(since "$t")s"

# ---- 2. base image ------------------------------------------------------------------------------
t=$(now)
if docker image inspect "$BASE" >/dev/null 2>&1; then
    say "base image $BASE: present"
else
    command -v debootstrap >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/tmp/docker_setup-apt.log 2>&1
    }
    root=$(mktemp -d /tmp/mlops-base-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "debootstrap bookworm from $MIRROR into $root (log: /tmp/docker_setup-debootstrap.log)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$MIRROR" >/tmp/docker_setup-debootstrap.log 2>&1 \
        || { say "debootstrap failed; tail of the log:"; tail -20 /tmp/docker_setup-debootstrap.log >&2; exit 1; }
    # `python` on PATH like python:3.11-slim; no apt lists or caches in the image.
    ln -sf python3 "$root/usr/bin/python"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        -c 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "base image $BASE: imported ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
say "base image step: $(since "$t")s"

# ---- 3. serving image ---------------------------------------------------------------------------
if ((BUILD_SERVING)); then
    t=$(now)
    ref=$(BASE_IMAGE="$BASE" tools/build_serving_image.sh | tail -1)
    say "serving image $ref: $(since "$t")s"
fi
say "total: $(since "$T0")s"
