"""Helpers for tests that start real local services (moto S3, mlflow server, Airflow components)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the demo dataset's registered model (include/specs/sessions.yaml: model_name)
SESSIONS_MODEL = "sessions_purchase"


def unavailable(reason: str) -> None:
    """A service the test needs is missing: skip on a workstation, fail in CI (``CI`` set), where a
    skip would let the test pass without running."""
    import pytest

    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (OSError, http.client.HTTPException):  # not up yet
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def create_pg_database(prefix: str) -> str:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth); returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)
    return name


def drop_pg_database(name: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                    f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)


@contextmanager
def mlflow_server(log: Path, *artifact_args: str, env: dict | None = None, db_prefix: str = "mlflow") -> Iterator[str]:
    """A real ``mlflow server`` on a fresh PostgreSQL database, artifacts as ``artifact_args`` say
    (e.g. ``--default-artifact-root DIR``); yields its URL, prints its log if the test fails, and
    stops it and drops the database afterwards. PostgreSQL missing: ``unavailable``."""
    try:
        db = create_pg_database(db_prefix)
    except (OSError, subprocess.CalledProcessError) as err:
        unavailable(f"PostgreSQL at 127.0.0.1:5432 cannot create a database: {err}")
    port = free_port()
    out = open(log, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"postgresql://postgres@127.0.0.1:5432/{db}", *artifact_args,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": "", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=180, proc=proc)
        yield url
    except BaseException:
        print(Path(log).read_text(errors="replace")[-5000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        out.close()
        drop_pg_database(db)


def serving_env(monkeypatch, state, backend: str):
    """Point the deploy code at a fresh gateway port with `backend` (local, docker or auto).

    For Docker, the serving image runs as uid 10001: it must be able to reach the MLflow store and
    the state dir, which pytest and mkdtemp create under 0700 directories.
    """
    import os
    from pathlib import Path

    from include.config import settings
    from include.deployment import docker_available

    if backend == "docker" or (backend == "auto" and docker_available()):
        monkeypatch.setenv("MLOPS_SERVING_BASE_IMAGE", os.environ.get("MLOPS_SERVING_BASE_IMAGE",
                                                                         "mlops-base:bookworm"))
        for d in (Path(state.state_dir), Path(state.data_repo).parent):
            for p in (d, *d.parents):
                if str(p).startswith("/tmp/") and p.stat().st_uid == os.getuid():
                    p.chmod(p.stat().st_mode | 0o755)
    port = free_port()
    monkeypatch.setenv("MLOPS_DEPLOY_BACKEND", backend)
    monkeypatch.setenv("MLOPS_SERVING_PORT", str(port))
    monkeypatch.setenv("MLOPS_GATEWAY_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLOPS_ADMIN_TOKEN", "test-admin-token")
    monkeypatch.setenv("MLOPS_PREDLOG_FLUSH_SECONDS", "0.5")
    return settings()
