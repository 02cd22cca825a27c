"""Test environment: every test session gets its own state dir, so tests never touch ./state.

Airflow reads AIRFLOW_HOME and its DB URI when first imported, so they are set here, before any
test module imports airflow. Per-test state (MLflow store, DVC repo and remote, landing,
quarantine) comes from the ``state`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlops-tests-"))
os.environ["MLOPS_STATE_DIR"] = str(_SESSION_DIR)
os.environ.pop("AIRFLOW_HOME", None)
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

from include.config import airflow_env, settings  # noqa: E402
from tests.services import free_port, wait_http  # noqa: E402

os.environ.update(airflow_env())
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("GIT_AUTHOR_NAME", "mlops-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "mlops-tests@localhost")
os.environ.setdefault("GIT_COMMITTER_NAME", "mlops-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "mlops-tests@localhost")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# deploys in tests have no live traffic: a short canary (promoted on what it saw) and rollback
# window instead of the policies' minutes; the canary tests set their own
os.environ.setdefault("MLOPS_DEPLOY_POLICY", '{"canary": {"min_seconds": 0, "max_seconds": 2}, '
                                             '"rollback_window": {"seconds": 2}}')
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite) for dag.test() runs; made once per session."""
    import subprocess
    import sys

    s = settings()
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True, capture_output=True, env=os.environ.copy(),
    )
    return s


@pytest.fixture
def state(tmp_path, monkeypatch):
    """Fresh per-test MLflow store, DVC data repo + local remote, landing and quarantine dirs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setenv("MLOPS_DATA_REPO", str(tmp_path / "data-repo"))
    monkeypatch.setenv("MLOPS_DVC_REMOTE", str(tmp_path / "dvc-remote"))
    monkeypatch.setenv("MLOPS_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("MLOPS_QUARANTINE_DIR", str(tmp_path / "quarantine"))
    monkeypatch.setenv("MLOPS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("MLOPS_PREDICTIONS_DIR", str(tmp_path / "predictions"))
    (tmp_path / "landing").mkdir()
    return settings()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API on a real localhost port (no real S3 server is installable here)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A fresh bucket on the S3 endpoint; AWS env points every client (boto3, DVC) at it."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLOPS_S3_ENDPOINT", s3_server)
    name = "mlops-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
