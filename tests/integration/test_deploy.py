"""The deploy DAG on real Airflow (dag.test), real MLflow and real servers behind the gateway.

Runs with the local-process backend always, and with the Docker backend on a real engine (in CI
the engine must be there: the Docker case fails instead of skipping). In the Docker backend the
infra validation is the provider's DockerOperator (`infra_validate_docker`); the local backend's
is the check as its own process (`infra_validate_local`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from include.demo_data import as_requests, make_batch
from tests.services import SESSIONS_MODEL, serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _docker_or_skip():
    from include.deployment import docker_available

    if docker_available():
        return
    if os.environ.get("CI"):
        pytest.fail("CI needs a Docker engine for the deployment tests (tools/docker_setup.sh)")
    pytest.skip("no Docker engine reachable: run tools/docker_setup.sh to include the Docker backend")


# A credential the infra validation container gets and must not show. Airflow masks rendered values
# under names like *access_key*, *secret*, *token*, *password* anyway; MLFLOW_TRACKING_USERNAME (like
# a store URI with a password in it) is not one of those, so only keeping it out of the rendered
# fields (private_environment) hides it.
SECRET = f"mlops-h12-{os.getpid()}-{int(time.time())}"


@pytest.fixture(params=["local", "docker"])
def deploy_env(request, airflow_db, state, monkeypatch):
    from include.deployment import stop_all

    if request.param == "docker":
        _docker_or_skip()
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", SECRET)  # ignored by the SQLite store the test uses
    yield serving_env(monkeypatch, state, request.param)
    stop_all()


def _ti(dr, task: str):
    """The task instance of ``release.<task>`` (map index 0: one model deploys)."""
    return next(ti for ti in dr.get_task_instances() if ti.task_id == f"release.{task}")


def _xcom(dr, task: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(select(XComModel).where(
            XComModel.dag_id == "deploy", XComModel.run_id == dr.run_id, XComModel.task_id == f"release.{task}",
            XComModel.map_index == 0, XComModel.key == "return_value"))
        return XComModel.deserialize_value(row)


def _rendered(dr, task: str) -> dict:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(RTIF.rendered_fields).where(
            RTIF.dag_id == "deploy", RTIF.run_id == dr.run_id, RTIF.task_id == f"release.{task}", RTIF.map_index == 0))


class ValidationContainers:
    """The engine's events for infra validation containers (start, exit with its code, removal),
    streamed while deploys run: asked afterwards with ``since``, a busy engine has already dropped
    them (it keeps its last 256 events; seen here with other stacks on the same engine)."""

    def __init__(self):
        import docker

        from include.config import settings

        self.client = docker.DockerClient(base_url=settings().docker_host or "unix:///var/run/docker.sock")
        self.stream = self.client.events(decode=True, filters={"type": "container",
                                                               "label": "mlops-loop=infra-validation"})
        self.events: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.stream:
                self.events.append(event)
        except Exception:  # noqa: BLE001 - the stream was closed
            pass

    def of(self, request: dict, action: str | None = None) -> list[dict]:
        """Events of the containers of this deploy run's validation (named after the run, one per
        try): other stacks on the same engine validate the same model version at the same time."""
        return [e for e in self.events if e["Actor"]["Attributes"].get("name", "").startswith(request["container"])
                and action in (None, e["Action"])]

    def close(self):
        self.stream.close()
        self.thread.join(timeout=10)
        self.client.close()


def _train(day: int, rows: int, family: str = "logreg") -> str:
    from include.spec import load_spec
    from include.training.train import train_and_register

    spec = load_spec("sessions")
    out = train_and_register(
        make_batch(day, rows), spec, family=family, seed=1, reason="test", run_key=f"deploy-test-{day}-{family}",
        lineage={"dataset": "sessions", "data_rev": "unknown", "data_md5": "unknown",
                 "validation_id": "unknown", "dag_run_id": "test"},
    )
    return str(out["version"])


def _deploy(version: str):
    from tests.dagrun import run_dag

    dr = run_dag("deploy", {"model": SESSIONS_MODEL, "version": version})
    # one model deploys: its tasks live in the mapped `release` group (map index 0)
    return dr, {ti.task_id.rsplit(".", 1)[-1]: str(ti.state) for ti in dr.get_task_instances()}


def _champion() -> str | None:
    from include.tracking import client, configure_mlflow

    configure_mlflow()
    try:
        return str(client().get_model_version_by_alias(SESSIONS_MODEL, "champion").version)
    except Exception:  # noqa: BLE001
        return None


def _row() -> dict:
    return as_requests(make_batch(7, 1))[0]


def _predict(gateway: str) -> dict:
    r = httpx.post(f"{gateway}/predict", json={"instances": [_row()]}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


class Load(threading.Thread):
    """Sends requests through the gateway until stopped; counts failures and versions seen.

    Like Go's net/http and browsers, it retries once a request whose keep-alive connection was
    closed before any response: every edge config change (canary, promote) replaces Caddy's
    server, which closes its idle connections (Go's Server.Shutdown), and a request sent on one
    in that instant was never read. Those are counted in ``retried``; anything else that fails,
    or fails again, is a failed request.
    """

    def __init__(self, url: str, workers: int = 4):
        super().__init__(daemon=True)
        self.url, self.workers = url, workers
        self.ok, self.failed, self.retried, self.versions, self.errors = 0, 0, 0, set(), []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def _worker(self):
        # many different sessions, as users send: a canary's scores are compared by distribution
        rows = as_requests(make_batch(7, 300, seed=threading.get_ident() % 1000))
        with httpx.Client(timeout=10) as c:
            i = 0
            while not self._stop_event.is_set():
                payload = {"instances": [rows[i % len(rows)]]}
                i += 1
                try:
                    try:
                        r = c.post(f"{self.url}/predict", json=payload)
                    except (httpx.RemoteProtocolError, httpx.ReadError):  # closed before any response
                        with self._lock:
                            self.retried += 1
                        r = c.post(f"{self.url}/predict", json=payload)
                    good = r.status_code == 200
                    detail = r.text[:200]
                except httpx.HTTPError as err:
                    good, detail = False, str(err)
                with self._lock:
                    if good:
                        self.ok += 1
                        self.versions.add(r.json()["model_version"])
                    else:
                        self.failed += 1
                        self.errors.append(detail)

    def run(self):
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self):
        self._stop_event.set()
        self.join(timeout=30)


def test_deploy_switch_under_load_then_broken_version_rolls_back(deploy_env, capfd):
    s = deploy_env
    v1, v2, v3 = _train(0, 1500), _train(1, 3000), _train(2, 1500)

    backend = s.deploy_backend
    check, other = f"infra_validate_{backend}", "infra_validate_local" if backend == "docker" else "infra_validate_docker"
    containers = ValidationContainers() if backend == "docker" else None
    dr, states = _deploy(v1)
    assert str(dr.state) == "success", states
    assert states[check] == "success" and states[other] == "skipped", states
    assert _champion() == v1
    assert _predict(s.gateway_url)["model_version"] == v1
    request = _xcom(dr, "prepare_infra_validation")  # paths only: the rows and scores stay in files
    assert set(request) >= {"golden", "expected", "results"} and "scores" not in request, request
    verdict = json.loads(Path(request["results"]).read_text())
    assert verdict["passed"] and verdict["rows"] > 0 and verdict["max_abs_diff"] <= 1e-9, verdict
    assert verdict["in"] == ("serving image" if backend == "docker" else "process"), verdict
    # the offline scores are the ones training logged, not a second scoring in the deploy worker
    assert json.loads(Path(request["expected"]).read_text())["source"].endswith("holdout/golden_scores.json")
    if backend == "docker":
        from airflow.dag_processing.dagbag import DagBag
        from airflow.providers.docker.operators.docker import DockerOperator

        from include.config import PROJECT_ROOT

        parsed = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "deploy.py")).dags["deploy"]
        assert isinstance(parsed.get_task(f"release.{check}"), DockerOperator)
        assert _ti(dr, check).operator == "InfraValidationOperator"  # the DockerOperator subclass ran it
        # the engine ran one container for it, which exited 0 and was removed
        seen = {e["Action"]: e["Actor"]["Attributes"] for e in containers.of(request)}
        assert {"start", "die", "destroy"} <= set(seen), seen
        assert [e["Actor"]["Attributes"]["exitCode"] for e in containers.of(request, "die")] == ["0"], seen
        # the container got the credential (privately): it is nowhere in the rendered fields
        assert "MLFLOW_TRACKING_USERNAME" in verdict["credentials"], verdict
        rendered = _rendered(dr, check)
        assert f"--version', '{v1}'" in rendered["command"] and rendered["mounts"], rendered
        assert SECRET not in json.dumps(rendered), rendered

    load = Load(s.gateway_url)
    load.start()
    time.sleep(1.0)
    dr, states = _deploy(v2)
    time.sleep(1.0)
    load.stop()
    assert str(dr.state) == "success", states
    assert load.failed == 0, load.errors[:5]
    assert {v1, v2} <= load.versions, load.versions  # both answered: the canary got its share
    print(f"switch under load: {load.ok} ok, {load.failed} failed, {load.retried} retried after a closed "
          f"keep-alive connection")
    assert _champion() == v2

    # v3's model artifact is broken in the store: infra validation must stop it
    from include.tracking import client

    mv = client().get_model_version(SESSIONS_MODEL, v3)
    model_id = mv.model_id or mv.source.removeprefix("models:/").split("/")[0]
    location = client().get_logged_model(model_id).artifact_location
    broken = [f for f in Path(location.replace("file://", "")).rglob("*") if f.is_file() and f.name != "MLmodel"
              and f.suffix in (".skops", ".pkl")]
    assert broken, f"no model file under {location}"
    for f in broken:
        f.write_bytes(b"not a model")
    capfd.readouterr()
    dr, states = _deploy(v3)
    logs = "".join(capfd.readouterr())
    assert str(dr.state) == "failed"
    # where it failed: in the validation task (the image / the server's own process), on its first
    # try, not in prepare_infra_validation (the offline scores are training's: no model load there)
    assert states["prepare_infra_validation"] == "success", states
    assert states[check] == "failed" and states["switch_traffic"] == "upstream_failed", states
    assert _ti(dr, check).try_number == 1, "a broken artifact was retried"
    assert states["rollback"] == "failed"  # it ran, and fails the run on purpose, saying why
    where = "the serving image" if backend == "docker" else "the server's own process"
    cause = f"infra validation of {SESSIONS_MODEL} v{v3} failed in {where} (exit 1): could not load or score the model"
    assert cause in logs, logs[-3000:]
    request = _xcom(dr, "prepare_infra_validation")
    verdict = json.loads(Path(request["results"]).read_text())
    assert not verdict["passed"] and "could not load or score the model" in verdict["error"], verdict
    if backend == "docker":
        died = containers.of(request, "die")
        containers.close()
        assert [e["Actor"]["Attributes"]["exitCode"] for e in died] == ["1"], died  # one container, one try
    assert _champion() == v2
    assert _predict(s.gateway_url)["model_version"] == v2

    # deploying the serving champion again changes nothing
    audit = (Path(s.reports_dir) / "deployments.jsonl").read_text().splitlines()
    dr, states = _deploy(v2)
    assert str(dr.state) == "success" and states["resolve_candidates"] == "success", states
    assert states["build"] == states["promote"] == "skipped", states  # nothing left to deploy
    assert (Path(s.reports_dir) / "deployments.jsonl").read_text().splitlines() == audit
    events = [json.loads(line)["event"] for line in audit]
    # v2 went through a canary next to v1 (judged on the load's traffic), v3 never got traffic
    assert events == ["deployed", "canary_analysis", "deployed", "rolled_back"], events

    # `stop` with only the state dir in its environment stops THIS state dir's gateway and servers
    # (it used to ask the default port and answer "nothing was serving")
    from include.deployment import gateway_route, gateway_status

    serving = gateway_route(SESSIONS_MODEL)[0]
    env = {k: v for k, v in os.environ.items() if k not in ("MLOPS_SERVING_PORT", "MLOPS_GATEWAY_URL")}
    out = subprocess.run([sys.executable, "-m", "include.deployment", "stop"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and f"{SESSIONS_MODEL} v{v2}" in out.stdout, out.stdout + out.stderr
    deadline = time.time() + 30
    while time.time() < deadline and gateway_status() is not None:
        time.sleep(0.2)
    assert gateway_status() is None, "the gateway still answers after stop"
    from include.deployment import backend_for

    assert not backend_for(serving).alive(serving), "the model server still runs after stop"


def test_new_server_dying_after_the_switch_sends_traffic_back(deploy_env):
    from include.deployment import DeployError, gateway_route, get_backend, start_release

    s = deploy_env
    v1, v2 = _train(0, 1500), _train(1, 1500)
    dr, states = _deploy(v1)
    assert str(dr.state) == "success", states
    backend = get_backend()

    outcome = {}

    def run():
        try:
            outcome["result"] = start_release(SESSIONS_MODEL, v2, "sessions", backend.build(SESSIONS_MODEL, v2),
                                              backend, canary_weight=0, watch_s=15)
        except DeployError as err:
            outcome["error"] = err

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        active = gateway_route(SESSIONS_MODEL)[0] or {}
        if active.get("version") == v2:
            backend.stop(active)  # the new server dies right after taking traffic
            break
        time.sleep(0.1)
    else:
        pytest.fail("the gateway never switched to v2")
    t.join(timeout=120)
    assert "error" in outcome and "died" in str(outcome["error"]), outcome
    assert gateway_route(SESSIONS_MODEL)[0]["version"] == v1
    assert _predict(s.gateway_url)["model_version"] == v1
    assert _champion() == v1
