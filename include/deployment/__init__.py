"""Stage 3: deploy a model version behind the serving edge (Caddy), blue/green, with rollback.

Steps (one DAG task each, so the UI shows where a deploy stopped):

1. ``build``          the serving image for the version (Docker) or nothing (local processes);
2. ``infra_validate`` a one-shot container (the Docker provider's ``DockerOperator``, see
                      include/infra_validation_operator.py) or, with the local backend, the
                      server's own process loads the version from the registry and scores the
                      golden holdout rows; the scores must equal the offline scores training
                      logged for the same rows (:func:`prepare_infra_validation`);
3. ``switch``         start the new server next to the old one, wait until it is ready, flip the
                      model's route on the edge to it (zero failed requests, see include/edge/),
                      then watch its health for a while;
4. ``promote``        only then move the alias ``champion``, tag the version, append to the audit
                      log; the old champion stays warm as the edge's fallback;
5. ``rollback``       on any failure in 2-4: the edge points back at the previous server,
                      the new one is stopped, the alias is untouched; the old champion keeps serving.

Backends: ``docker`` (a Docker engine, via ``DOCKER_HOST`` or the local socket) and ``local``
(uvicorn processes on this machine, for ``make demo`` without Docker). ``MLOPS_DEPLOY_BACKEND``
= ``auto`` picks docker when an engine answers and has (or can pull) the serving base image.

Modules: :mod:`.backends` (where servers run, ``auto``'s choice), :mod:`.gateway` (the edge as the
steps see it, server readiness), :mod:`.infra` (step 2's inputs and the local check),
:mod:`.release` (steps 3-5, the idempotency check, `make stop`), :mod:`.audit` (the audit log),
:mod:`.errors`. Every name stays importable from ``include.deployment``; each module imports only
the standard library and include.config at the top (Airflow, MLflow, httpx, docker load inside
the functions), so the DAG file and the operator import this package cheaply.
"""

from include.deployment.audit import audit, read_audit
from include.deployment.backends import (
    SERVING_IMAGE,
    DockerBackend,
    LocalBackend,
    backend_for,
    container_mounts,
    docker_available,
    docker_can_build,
    get_backend,
    serving_env,
)
from include.deployment.errors import DeployError
from include.deployment.gateway import (
    ensure_gateway,
    gateway_route,
    gateway_status,
    gateway_switch,
    stop_gateway,
    wait_ready,
)
from include.deployment.infra import (
    expected_scores,
    golden_sample,
    infra_validate_local,
    prepare_infra_validation,
    validation_env,
    validation_failure,
)
from include.deployment.release import already_deployed, promote, rollback, start_release, stop_all

__all__ = [
    "SERVING_IMAGE", "DeployError", "DockerBackend", "LocalBackend", "already_deployed", "audit", "backend_for",
    "container_mounts", "docker_available", "docker_can_build", "ensure_gateway", "expected_scores",
    "gateway_route", "gateway_status", "gateway_switch", "get_backend", "golden_sample", "infra_validate_local",
    "prepare_infra_validation", "promote", "read_audit", "rollback", "serving_env", "start_release", "stop_all",
    "stop_gateway", "validation_env", "validation_failure", "wait_ready",
]
