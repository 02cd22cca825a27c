#!/usr/bin/env bash
# Build the serving image (include/serving/Dockerfile) through the Docker API, without network
# inside the build: see include/serving/image.py (the deploy stage's `build` task runs the same code).
#
#   tools/build_serving_image.sh [--tag TAG]
#
# env: BASE_IMAGE (default MLOPS_SERVING_BASE_IMAGE; on this machine mlops-base:bookworm, see
#      tools/docker_setup.sh), IMAGE (default mlops-serving), PYTHON (default .venv/bin/python).
# The tag defaults to a content hash of everything that goes into the image, so the same code
# always gets the same tag (and is not rebuilt). The last line of stdout is the image reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHON
exec "$PYTHON" -m include.serving.image "$@"
