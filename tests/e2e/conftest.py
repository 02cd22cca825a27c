"""A live embedded Airflow (`airflow standalone`: scheduler, dag-processor, triggerer, API server,
LocalExecutor on SQLite) in its own state dir, driven only through its REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, wait_http

VENV_BIN = Path(sys.executable).parent


@dataclass
class LiveAirflow:
    url: str
    env: dict
    state_dir: Path
    username: str
    password: str
    log: Path

    def client(self) -> httpx.Client:
        r = httpx.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password})
        r.raise_for_status()
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {r.json()['access_token']}"})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        with self.client() as c:
            r = c.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
            assert r.status_code in (200, 201), r.text
            return r.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        with self.client() as c:
            r = c.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "run_after", "limit": 100})
            r.raise_for_status()
            return r.json()["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str | None = None, *, after: int = 0, timeout: float = 300) -> dict:
        """Wait for run_id (or the (after+1)-th run of dag_id) to finish; return it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            runs = self.runs(dag_id)
            match = [r for r in runs if r["dag_run_id"] == run_id] if run_id else runs[after:after + 1]
            if match and match[0]["state"] in ("success", "failed"):
                return match[0]
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id or f'#{after + 1}'} unfinished after {timeout}s; "
                           f"runs: {[(r['dag_run_id'], r['state']) for r in self.runs(dag_id)]}\n"
                           f"{self.log.read_text()[-4000:]}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        from urllib.parse import quote

        with self.client() as c:
            r = c.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
            return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in r.json()["task_instances"]}


@pytest.fixture(scope="module")
def live_airflow(tmp_path_factory):
    state = tmp_path_factory.mktemp("live-state")
    port, serving_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    env["MLOPS_STATE_DIR"] = str(state)
    from include.config import airflow_env, settings

    os.environ["MLOPS_STATE_DIR"], saved = str(state), os.environ.get("MLOPS_STATE_DIR")
    try:
        env.update(airflow_env(settings()))
    finally:
        os.environ["MLOPS_STATE_DIR"] = saved
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "MLOPS_SERVING_PORT": str(serving_port),
        "MLOPS_DEPLOY_BACKEND": os.environ.get("MLOPS_DEPLOY_BACKEND", "local"),
        "GX_ANALYTICS_ENABLED": "False",
        "MLOPS_ADMIN_TOKEN": "e2e-admin-token-not-a-real-secret",
    })
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    log = state / "standalone.log"
    proc = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/v2/monitor/health", timeout=180, proc=proc)
        pw_file = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        deadline = time.time() + 60
        while not pw_file.exists() and time.time() < deadline:
            time.sleep(0.5)
        password = json.loads(pw_file.read_text())["admin"]
        live = LiveAirflow(url=url, env=env, state_dir=state, username="admin", password=password, log=log)
        deadline = time.time() + 120  # wait until the dag-processor has registered our DAGs
        while time.time() < deadline:
            with live.client() as c:
                ids = {d["dag_id"] for d in c.get("/api/v2/dags").json().get("dags", [])}
            if {"ingest", "train"} <= ids:
                break
            time.sleep(2)
        yield live
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", f"include.gateway --port {serving_port}"], check=False)
        shutil.rmtree(state / "airflow" / "logs", ignore_errors=True)
