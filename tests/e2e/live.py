"""A live Airflow in its own state dir, driven only through its REST API: embedded
(`airflow standalone`, LocalExecutor on SQLite) or distributed (Celery, PostgreSQL, Redis, an
mlflow server, S3). Used by the e2e tests and by bench/loop.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.services import create_pg_database, drop_pg_database, free_port, wait_http

VENV_BIN = Path(sys.executable).parent


@dataclass
class LiveAirflow:
    url: str
    env: dict
    state_dir: Path
    username: str
    password: str
    log: Path
    mode: str = "embedded"

    def client(self) -> httpx.Client:
        r = httpx.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password},
                       timeout=60)
        r.raise_for_status()
        # generous timeouts: on 2 cores the API server shares the CPU with running tasks
        return httpx.Client(base_url=self.url, timeout=60,
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

    def set_paused(self, dag_id: str, paused: bool) -> None:
        with self.client() as c:
            c.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()

    def clear_queued_asset_events(self, dag_id: str) -> None:
        """Forget the Asset events waiting to schedule dag_id (so unpausing it starts no run)."""
        with self.client() as c:
            r = c.delete(f"/api/v2/dags/{dag_id}/assets/queuedEvents")
            assert r.status_code in (204, 404), r.text  # 404: nothing queued

    def dag_params(self, dag_id: str) -> dict:
        """The DAG's Params as the API server has them: {name: default value}."""
        with self.client() as c:
            r = c.get(f"/api/v2/dags/{dag_id}/details")
            r.raise_for_status()
            return {k: p.get("value") for k, p in (r.json().get("params") or {}).items()}

    def python(self, code: str, timeout: float = 120) -> str:
        """Run code in this deployment's environment (its MLflow, data repo, ...); its last stdout line."""
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        from urllib.parse import quote

        with self.client() as c:
            r = c.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
            return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in r.json()["task_instances"]}


def _base_env(state: Path) -> dict:
    from include.config import airflow_env, settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    # settings() reads os.environ, which holds the pytest session's Airflow: hide it meanwhile
    keys = ("MLOPS_STATE_DIR", "AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    saved = {k: os.environ.pop(k, None) for k in keys}
    os.environ["MLOPS_STATE_DIR"] = str(state)
    try:
        env.update(airflow_env(settings()))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return env


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _group_alive(pgid: int) -> bool:
    """Does any live (not zombie) process remain in process group pgid?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if group == str(pgid) and state != "Z":
            return True
    return False


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        # `airflow standalone` exits on SIGTERM before its children do, and its scheduler (with the
        # LocalExecutor's workers) may never finish shutting down: whatever is left gets SIGKILL
        deadline = time.time() + 5
        while _group_alive(p.pid) and time.time() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def live_stack(mode: str, state: Path, *, s3_url: str | None = None, extra_env: dict | None = None,
               dag_ids: tuple[str, ...] = ("ingest", "train")):
    """A live Airflow in either mode, same DAGs, same REST API:

    * embedded: `airflow standalone` (LocalExecutor, SQLite), MLflow on SQLite, DVC remote a dir;
    * distributed: api-server + scheduler + dag-processor + Celery worker as separate processes,
      PostgreSQL metadata DB, Redis broker, an `mlflow server` on PostgreSQL with S3 artifacts, and
      the DVC remote on S3 (moto's S3 API server stands in for S3/MinIO).

    It yields once the DAGs in dag_ids are registered.
    """
    port, serving_port = free_port(), free_port()
    env = _base_env(state)
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "MLOPS_SERVING_PORT": str(serving_port),
        "MLOPS_DEPLOY_BACKEND": os.environ.get("MLOPS_DEPLOY_BACKEND", "local"),
        "GX_ANALYTICS_ENABLED": "False",
        "MLOPS_ADMIN_TOKEN": "e2e-admin-token-not-a-real-secret",
        "MLOPS_PREDLOG_FLUSH_SECONDS": "0.5",
        **(extra_env or {}),
    })
    log = state / f"airflow-{mode}.log"
    procs: list[subprocess.Popen] = []
    databases: list[str] = []
    try:
        if mode == "distributed":
            env.update(_distributed_services(state, env, procs, databases, s3_url))
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        if mode == "embedded":
            procs.append(_spawn([str(VENV_BIN / "airflow"), "standalone"], env, log))
        else:
            for component in (["api-server", "--port", str(port)], ["scheduler"], ["dag-processor"],
                              ["celery", "worker", "--concurrency", "2"]):
                procs.append(_spawn([str(VENV_BIN / "airflow"), *component], env, log))
        url = f"http://127.0.0.1:{port}"
        # `airflow standalone` takes over 3 minutes to answer on 2 busy cores (CI runs other jobs too)
        wait_http(f"{url}/api/v2/monitor/health", timeout=600, proc=procs[-1 if mode == "embedded" else 0])
        pw_file = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        deadline = time.time() + 60
        while not pw_file.exists() and time.time() < deadline:
            time.sleep(0.5)
        password = json.loads(pw_file.read_text())["admin"]
        live = LiveAirflow(url=url, env=env, state_dir=state, username="admin", password=password, log=log)
        live.mode = mode
        deadline = time.time() + 120  # wait until the dag-processor has registered our DAGs
        while time.time() < deadline:
            with live.client() as c:
                ids = {d["dag_id"] for d in c.get("/api/v2/dags").json().get("dags", [])}
            if set(dag_ids) <= ids:
                break
            time.sleep(2)
        yield live
    finally:
        _kill(procs)
        subprocess.run([str(VENV_BIN / "python"), "-m", "include.deployment", "stop"], env=env,
                       capture_output=True, check=False)
        for db in databases:
            drop_pg_database(db)
        shutil.rmtree(state / "airflow" / "logs", ignore_errors=True)


def _distributed_services(state: Path, env: dict, procs: list, databases: list, s3_url: str) -> dict:
    """PostgreSQL databases, Redis, moto S3 and an mlflow server; returns the env that points at them."""
    import boto3

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_url}
    bucket = f"mlops-e2e-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    airflow_db, mlflow_db = create_pg_database("airflow_e2e"), create_pg_database("mlflow_e2e")
    databases += [airflow_db, mlflow_db]
    pg = "postgres@127.0.0.1:5432"
    mlflow_port = free_port()
    mlflow_env = {**env, **creds, "MLFLOW_S3_ENDPOINT_URL": s3_url}
    procs.append(_spawn([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"postgresql://{pg}/{mlflow_db}",
                         "--default-artifact-root", f"s3://{bucket}/mlflow", "--host", "127.0.0.1",
                         "--port", str(mlflow_port), "--workers", "1"], mlflow_env, state / "mlflow-server.log"))
    wait_http(f"http://127.0.0.1:{mlflow_port}/health", timeout=120, proc=procs[-1])
    # a Redis DB of its own: the two pytest-xdist workers of `make test` differ in parity, so their
    # Celery brokers never share a queue (DB 0 is left to a developer's own stack)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    redis_db = 1 + 2 * (os.getpid() % 7) + worker % 2
    return {
        **creds,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        "MLOPS_S3_ENDPOINT": s3_url,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLOPS_MLFLOW_ARTIFACT_ROOT": f"s3://{bucket}/mlflow",
        "MLOPS_DVC_REMOTE": f"s3://{bucket}/dvc",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}/{airflow_db}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}/{airflow_db}",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-jwt-secret-not-a-real-secret",
        "AIRFLOW__CORE__FERNET_KEY": "",
    }
