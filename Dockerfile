# The Airflow image of the distributed mode (docker-compose.yaml): the official Apache Airflow image
# of the pinned version, the project's locked dependencies, and the project itself (DAGs, the
# `include` library, plugins, tools) at /opt/airflow/project, installed editable so `include` is
# importable and include.config.PROJECT_ROOT is the project directory (specs, policies, tools/).
#
#   docker compose build               # or: docker build -t mlops-loop-airflow:local .
#
# AIRFLOW_VERSION must equal the apache-airflow pin in requirements.txt (tests/unit/test_compose.py
# checks it). Nothing secret is baked in: every credential comes from the environment at run time,
# and .dockerignore admits only the files listed there (never .env, state/ or .git).
# The image also runs the MLflow server (same code, same pins); the serving edge is the official Caddy image.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
ARG AIRFLOW_BASE=apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
FROM ${AIRFLOW_BASE}
# (the official image also sets AIRFLOW_VERSION in its environment; both agree)
ARG AIRFLOW_VERSION

# System packages, as root (official image docs: switch to root for apt, back to airflow for pip):
# git, because DVC versions the datasets in a git repo; the Docker CLI, because the deploy DAG builds
# the serving image (tools/build_serving_image.sh) on the engine at DOCKER_HOST. Debian >= 13 ships
# the client alone as docker-cli; older releases only as docker.io.
USER root
RUN apt-get update \
 && cli=docker.io && if apt-cache show docker-cli >/dev/null 2>&1; then cli=docker-cli; fi \
 && apt-get install -y --no-install-recommends git "$cli" \
 && apt-get autoremove -yqq --purge \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/airflow/project \
 && chown airflow:0 /opt/airflow/project

USER airflow
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/airflow/project

# Dependencies first (their layer survives code changes). Pinning apache-airflow to the base image's
# own version, as the official docs advise, stops the lock from moving Airflow under the image.
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml ./
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r requirements.txt -c constraints.txt

# The project. An editable install keeps PROJECT_ROOT = /opt/airflow/project (a regular install would
# move `include` to site-packages, away from dags/ and tools/).
COPY --chown=airflow:0 . ./
RUN mkdir -p dags plugins \
 && pip install --no-cache-dir --no-deps -e . \
 && python -c "import include.config, include.edge, include.cli" \
 && chmod -R g+rwX /opt/airflow/project
# g+rwX: the containers may run as any AIRFLOW_UID with GID 0 (official image convention), and the
# deploy task writes build/ (the serving image's wheelhouse) here.

WORKDIR /opt/airflow
