"""Every endpoint and limit of the loop, read from the environment with an embedded default.

The embedded defaults all live under one state directory (``MLOPS_STATE_DIR``, default
``<project>/state``, git-ignored), so a fresh clone runs with no setup and ``rm -rf state``
resets everything. Distributed mode sets the same variables to real services.

This module is cheap to import (stdlib only): DAG files may import it at parse time, but they
must call :func:`settings` inside tasks, because the environment of a worker is the one that counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_number(name: str, default, cast=int):
    """A numeric setting from the environment (unset or blank: ``default``), with a clear error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be a{'n integer' if cast is int else ' number'}, got {raw!r}") from err


def _env_int(name: str, default: int) -> int:
    return env_number(name, default, int)


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    airflow_home: Path
    airflow_db_uri: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    mlflow_registry_uri: str
    data_repo: Path
    dvc_remote: str
    landing: str
    quarantine_dir: Path
    reports_dir: Path
    predictions_dir: Path
    serving_port: int
    gateway_url: str
    specs_dir: Path
    policies_dir: Path
    s3_endpoint: str | None
    docker_host: str | None
    deploy_backend: str
    serving_base_image: str
    docker_network: str | None
    max_batch_bytes: int
    max_batch_rows: int
    lock_timeout_s: int

    @property
    def landing_is_s3(self) -> bool:
        return self.landing.startswith("s3://")

    def spec_path(self, dataset: str) -> Path:
        return self.specs_dir / f"{dataset}.yaml"


def settings() -> Settings:
    """Read the configuration now (not at import): tests and workers may change the environment."""
    state = Path(_env("MLOPS_STATE_DIR", str(PROJECT_ROOT / "state"))).resolve()
    airflow_home = Path(_env("AIRFLOW_HOME", str(state / "airflow")))
    mlflow_uri = _env("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow' / 'mlflow.db'}")
    return Settings(
        state_dir=state,
        airflow_home=airflow_home,
        airflow_db_uri=_env(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_home / 'airflow.db'}"
        ),
        mlflow_tracking_uri=mlflow_uri,
        mlflow_artifact_root=_env("MLOPS_MLFLOW_ARTIFACT_ROOT", (state / "mlflow" / "artifacts").as_uri()),
        mlflow_registry_uri=_env("MLFLOW_REGISTRY_URI", mlflow_uri),
        data_repo=Path(_env("MLOPS_DATA_REPO", str(state / "data-repo"))),
        dvc_remote=_env("MLOPS_DVC_REMOTE", str(state / "dvc-remote")),
        landing=_env("MLOPS_LANDING", str(state / "landing")),
        quarantine_dir=Path(_env("MLOPS_QUARANTINE_DIR", str(state / "quarantine"))),
        reports_dir=Path(_env("MLOPS_REPORTS_DIR", str(state / "reports"))),
        predictions_dir=Path(_env("MLOPS_PREDICTIONS_DIR", str(state / "predictions"))),
        serving_port=_env_int("MLOPS_SERVING_PORT", 8700),
        gateway_url=_env("MLOPS_GATEWAY_URL", f"http://127.0.0.1:{_env_int('MLOPS_SERVING_PORT', 8700)}"),
        specs_dir=Path(_env("MLOPS_SPECS_DIR", str(PROJECT_ROOT / "include" / "specs"))),
        # gate (<dataset>.yaml) and drift (drift_<dataset>.yaml) policies
        policies_dir=Path(_env("MLOPS_POLICIES_DIR", str(PROJECT_ROOT / "include" / "policies"))),
        s3_endpoint=os.environ.get("MLOPS_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None,
        docker_host=os.environ.get("DOCKER_HOST") or None,
        deploy_backend=_env("MLOPS_DEPLOY_BACKEND", "auto"),
        serving_base_image=_env("MLOPS_SERVING_BASE_IMAGE", "python:3.11-slim"),
        # None: serving containers share the host's network (embedded); compose sets its network name
        docker_network=os.environ.get("MLOPS_DOCKER_NETWORK") or None,
        max_batch_bytes=_env_int("MLOPS_MAX_BATCH_BYTES", 512 * 1024 * 1024),
        max_batch_rows=_env_int("MLOPS_MAX_BATCH_ROWS", 5_000_000),
        lock_timeout_s=_env_int("MLOPS_LOCK_TIMEOUT_S", 600),
    )


def admin_token(s: Settings | None = None) -> str:
    """Bearer token for the serving admin endpoints: MLOPS_ADMIN_TOKEN, else a random one kept in
    ``<state>/secrets/admin_token`` (mode 0600) so the gateway and the deploy task share it."""
    token = os.environ.get("MLOPS_ADMIN_TOKEN", "").strip()
    if token:
        return token
    s = s or settings()
    path = s.state_dir / "secrets" / "admin_token"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def airflow_env(s: Settings | None = None) -> dict[str, str]:
    """Environment for an embedded Airflow (CLI, standalone, dag.test) rooted in the state dir."""
    s = s or settings()
    return {
        "AIRFLOW_HOME": str(s.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": s.airflow_db_uri,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # a killed worker is noticed after ~30 s instead of Airflow's 300 s default: task heartbeats
        # come every 5 s here, so 30 s is 6 missed beats, not a slow task
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": os.environ.get(
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "30"),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": os.environ.get(
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL", "5"),
        "MLOPS_STATE_DIR": str(s.state_dir),
    }
