"""Helpers for tests that start real local services (moto S3, mlflow server, Airflow components)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid


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
        except Exception:  # noqa: BLE001 - not up yet
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
