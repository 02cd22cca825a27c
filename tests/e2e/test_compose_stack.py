"""The distributed stack starts for real: `docker compose up --wait` on the CI images, then only the
stack's own interfaces (docs/compose.md, "Running the stack without an image registry").

Checked: every long-running service turns healthy; the Airflow API answers the admin from the
generated .env and has parsed the five DAGs; MLflow answers; Prometheus has loaded the alert rules
and scrapes the edge and the Pushgateway; an outcome a task pushes (from the worker, through
include/metrics_push.py) reaches Prometheus with its labels and fires its alert (alerts API); and
every Grafana panel's query runs against the live Prometheus.

Marked `compose` and run only with MLOPS_COMPOSE_E2E=1 (it needs tools/build_ci_images.sh's
images and several minutes); not part of `make test`: see docs/compose.md for its duration.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mlops-e2e"
# published ports on a loopback address of their own: a developer's embedded stack keeps 127.0.0.1:8700 etc.
BIND = "127.0.0.2"

pytestmark = [
    pytest.mark.compose, pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MLOPS_COMPOSE_E2E") != "1",
                       reason="the compose e2e runs with MLOPS_COMPOSE_E2E=1 (after tools/build_ci_images.sh)"),
]


def generated_env(state_dir: Path) -> dict[str, str]:
    """A .env as docs/compose.md says to make one: every secret random, nothing from .env.example kept."""
    from cryptography.fernet import Fernet

    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = secrets.token_hex(24) if "CHANGE_ME" in value else value
    env.update(AIRFLOW_FERNET_KEY=Fernet.generate_key().decode(), AWS_ACCESS_KEY_ID="mlops-e2e-service",
               MINIO_ROOT_USER="mlops-e2e-root", MLOPS_STATE_HOST_DIR=str(state_dir),
               DOCKER_GID=str(os.stat("/var/run/docker.sock").st_gid), MLOPS_BIND_ADDRESS=BIND,
               MLOPS_SERVING_BASE_IMAGE=os.environ.get("MLOPS_SERVING_BASE_IMAGE", "mlops-base:bookworm"))
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not shutil.which("docker"):
        pytest.fail("no docker client")
    workdir = tmp_path_factory.mktemp("compose-e2e")
    env = generated_env(workdir / "state")
    env_file = workdir / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    compose = ["docker", "compose", "-p", PROJECT, "--env-file", str(env_file),
               "-f", str(ROOT / "docker-compose.yaml"), "-f", str(ROOT / "docker-compose.ci.yaml")]

    def run(*args, timeout=900, check=True):
        result = subprocess.run([*compose, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            logs = subprocess.run([*compose, "logs", "--tail", "40"], cwd=ROOT, capture_output=True, text=True)
            pytest.fail(f"docker compose {' '.join(args)} failed:\n{result.stderr[-4000:]}\n{logs.stdout[-8000:]}")
        return result

    try:  # a failed `up` is torn down too
        t0 = time.monotonic()
        run("up", "-d", "--wait", "--wait-timeout", "600")
        print(f"compose e2e: up --wait took {time.monotonic() - t0:.0f}s")
        yield {"env": env, "run": run}
    finally:
        run("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def poll(fn, what: str, timeout: float = 120.0, every: float = 3.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as err:
            last = err
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f}s (last error: {last})")


def prometheus(path: str, **params) -> dict:
    r = httpx.get(f"http://{BIND}:9090{path}", params=params, timeout=10)
    r.raise_for_status()
    return r.json()["data"]


def test_every_service_is_healthy(stack):
    rows = [json.loads(line) for line in stack["run"]("ps", "--format", "json").stdout.splitlines() if line.strip()]
    states = {r["Service"]: (r["State"], r.get("Health", "")) for r in rows}
    for service in ("postgres", "redis", "minio", "mlflow", "edge", "pushgateway", "prometheus", "grafana",
                    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker"):
        assert states.get(service) == ("running", "healthy"), f"{service}: {states.get(service)}"


def test_airflow_and_mlflow_answer(stack):
    env = stack["env"]
    token = httpx.post(f"http://{BIND}:8080/auth/token", timeout=30,
                       json={"username": "admin", "password": env["AIRFLOW_ADMIN_PASSWORD"]}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    def dags():
        ids = {d["dag_id"] for d in httpx.get(f"http://{BIND}:8080/api/v2/dags", headers=headers, timeout=30)
               .json()["dags"]}
        return ids if {"ingest", "train", "deploy", "monitor_drift", "batch_score"} <= ids else None

    poll(dags, "the dag-processor parses the five DAGs", timeout=180)
    errors = httpx.get(f"http://{BIND}:8080/api/v2/importErrors", headers=headers, timeout=30).json()
    assert errors["total_entries"] == 0, errors
    assert httpx.get(f"http://{BIND}:5000/health", timeout=10).status_code == 200


def test_prometheus_loads_the_alerts_and_scrapes_the_stack(stack):
    groups = {g["name"] for g in prometheus("/api/v1/rules")["groups"]}
    assert {"mlops-serving", "mlops-loop"} <= groups

    def targets_up():
        active = prometheus("/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if health.get("mlops-edge") == health.get("pushgateway") == "up" else None

    poll(targets_up, "the edge and the Pushgateway are scraped")


def test_a_pushed_outcome_reaches_prometheus_and_fires_its_alert(stack):
    # from the worker, where tasks run, through the same function the ingest task calls
    stack["run"]("exec", "-T", "airflow-worker", "python", "-c",
                 "from include.metrics_push import quarantine_outcome; "
                 "assert quarantine_outcome('sessions', 'compose_e2e', rows=3)")

    def scraped():
        result = prometheus("/api/v1/query", query='mlops_validation_quarantine_rows{dataset="sessions"}')["result"]
        return result if result and result[0]["metric"].get("model") == "sessions_purchase" else None

    poll(scraped, "the pushed quarantine in Prometheus, labelled by dataset and model")

    def firing():
        alerts = prometheus("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ValidationQuarantine" and a["state"] == "firing"]

    assert poll(firing, "ValidationQuarantine fires")[0]["labels"]["dataset"] == "sessions"


def test_every_dashboard_query_runs_on_the_live_prometheus(stack):
    from tests.unit.test_dashboard import queries

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "mlops-loop.json").read_text())
    for title, expr in queries(dashboard):
        r = httpx.get(f"http://{BIND}:9090/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", f"{title}: {r.text[:300]}"
