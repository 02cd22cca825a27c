#!/usr/bin/env bash
# Build the serving image (include/serving/Dockerfile) without network inside the build:
# the wheels are built on the host into build/wheels and sent in the build context.
#
#   tools/build_serving_image.sh [TAG]
#
# env: BASE_IMAGE (default python:3.11-slim; on this machine mlops-base:bookworm, see
#      tools/docker_setup.sh), IMAGE (default mlops-serving), PYTHON (default .venv/bin/python).
# TAG defaults to a content hash of everything that goes into the image (Dockerfile, requirements,
# base image, the include/ package), so the same code always gets the same tag.
# The image is also tagged IMAGE:latest. The last line of stdout is the image reference.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
IMAGE=${IMAGE:-mlops-serving}
PYTHON=${PYTHON:-.venv/bin/python}
CTX=build/serving-context
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# 1. Wheelhouse on the host. The base images are Debian bookworm with CPython 3.11, so the host's
#    cp311 manylinux wheels fit. pip keeps wheels already in the directory.
#    When the wheelhouse already holds everything, the offline resolve (--no-index) is enough.
mkdir -p build/wheels
if ! "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-index --find-links build/wheels \
        -r include/serving/requirements.txt -c constraints.txt -w build/wheels >/dev/null 2>&1; then
    "$PYTHON" -m pip wheel -q --disable-pip-version-check -r include/serving/requirements.txt \
        -c constraints.txt -w build/wheels 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
echo "wheelhouse ready in $(elapsed "$t0")s ($(find build/wheels -name '*.whl' | wc -l) wheels)" >&2

# 2. A minimal build context: Dockerfile, requirements, wheels (hard links), the include package.
rm -rf "$CTX"
mkdir -p "$CTX/wheels"
cp include/serving/Dockerfile include/serving/requirements.txt "$CTX/"
cp -al build/wheels/. "$CTX/wheels/" 2>/dev/null || cp -a build/wheels/. "$CTX/wheels/"
tar -c --exclude=__pycache__ --exclude='*.pyc' include | tar -x -C "$CTX"

if [[ $# -ge 1 && -n "$1" ]]; then
    TAG=$1
else
    TAG=$( { echo "$BASE_IMAGE"; cd "$CTX" && find Dockerfile requirements.txt include -type f -print0 \
             | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-12)
fi

# 3. Build. Only classic-builder features are used, so it builds with or without BuildKit.
t1=$(date +%s.%N)
docker build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE:$TAG" -t "$IMAGE:latest" "$CTX" >&2
echo "built $IMAGE:$TAG from $BASE_IMAGE: docker build $(elapsed "$t1")s, total $(elapsed "$t0")s" >&2
echo "$IMAGE:$TAG"
