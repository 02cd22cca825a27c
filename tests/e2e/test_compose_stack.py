"""The distributed stack starts for real: `docker compose up --wait` on the CI images, then only the
stack's own interfaces (docs/compose.md, "Running the stack without an image registry").

Checked: every long-running service turns healthy; the Airflow API answers the admin from the
generated .env and has parsed the five DAGs; MLflow answers; Prometheus has loaded the alert rules
and scrapes the edge and the Pushgateway; an outcome a task pushes (from the worker, through
include/metrics_push.py) reaches Prometheus with its labels and fires its alert (alerts API); and
every Grafana panel's query runs against the live Prometheus. Then the loop: a batch landed on S3
is ingested on the Celery worker, `train` (on the Asset) registers a version on the MLflow server
and the gate passes it, `deploy` (on the Asset) starts its model server through the mounted Docker
engine and the edge serves predictions; `docker compose restart edge` keeps the edge's routes
(Caddy resumes the config the deploy loaded); drifted traffic through the edge and its labels
landed on S3 make `monitor_drift` (triggered through the REST API) trigger a retrain, during which
`docker compose restart airflow-scheduler airflow-worker` loses nothing (the run completes), and the
retrained version becomes the champion through a canary under live traffic; stopping the champion's
container fires ModelServerDown; and `docker compose down` (volumes kept) then `up` keeps the model
versions, the champion and the edge's routes.

The tests run in file order on one stack (module fixture): each loop step needs the one before.

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
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.live import LiveAirflow

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mlops-e2e"
# published ports on a loopback address of their own: a developer's embedded stack keeps 127.0.0.1:8700 etc.
BIND = "127.0.0.2"
MODEL = "sessions_purchase"
# seconds per step, printed as they finish (pytest -s) and summed at the end: docs/compose.md quotes them
TIMES: dict[str, float] = {}

pytestmark = [
    pytest.mark.compose, pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MLOPS_COMPOSE_E2E") != "1",
                       reason="the compose e2e runs with MLOPS_COMPOSE_E2E=1 (after tools/build_ci_images.sh)"),
]


def generated_env(state_dir: Path) -> dict[str, str]:
    """A .env as docs/compose.md says to make one: every secret random, nothing from .env.example kept."""
    from cryptography.fernet import Fernet

    from include.monitoring import policies_overlay

    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = secrets.token_hex(24) if "CHANGE_ME" in value else value
    env.update(AIRFLOW_FERNET_KEY=Fernet.generate_key().decode(), AWS_ACCESS_KEY_ID="mlops-e2e-service",
               MINIO_ROOT_USER="mlops-e2e-root", MLOPS_STATE_HOST_DIR=str(state_dir),
               DOCKER_GID=str(os.stat("/var/run/docker.sock").st_gid), MLOPS_BIND_ADDRESS=BIND,
               MLOPS_SERVING_BASE_IMAGE=os.environ.get("MLOPS_SERVING_BASE_IMAGE", "mlops-base:bookworm"))
    # the test reaches MLflow on BIND: a host name of its own, which MLflow's DNS-rebinding protection
    # must be told about (docs/compose.md: "add your host name to MLFLOW_ALLOWED_HOSTS")
    env["MLFLOW_ALLOWED_HOSTS"] += f",{BIND},{BIND}:*"
    # the shipped policies but for the drift retrain policy: no cooldown after v1 (created minutes
    # before the drift check), one drift retrain a day (a scheduled check cannot start a second one
    # in the test), fitted on the newest day only (the drifted batch), as in test_closed_loop
    env["MLOPS_POLICIES_DIR"] = str(policies_overlay(state_dir / "policies", cooldown_hours=0,
                                                     max_retrains_per_day=1, retrain_window_days=1))
    return env


def timed(step: str, t0: float) -> None:
    TIMES[step] = time.monotonic() - t0
    print(f"compose e2e: {step} took {TIMES[step]:.0f}s", flush=True)


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
            # the logs of the services that are neither healthy nor done (those name the cause)
            ps = subprocess.run([*compose, "ps", "-a", "--format", "json"], cwd=ROOT, capture_output=True, text=True)
            rows = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
            bad = [r["Service"] for r in rows if r.get("Health") not in ("", "healthy")
                   or (r["State"] == "exited" and r.get("ExitCode")) or r["State"] == "created"]
            logs = subprocess.run([*compose, "logs", "--tail", "40", *bad], cwd=ROOT, capture_output=True, text=True)
            pytest.fail(f"docker compose {' '.join(args)} failed (not healthy or failed: {bad}):\n"
                        f"{result.stderr[-3000:]}\n{logs.stdout[-8000:]}")
        return result

    airflow = LiveAirflow(url=f"http://{BIND}:8080", env=env, state_dir=workdir / "state",
                          username=env["AIRFLOW_ADMIN_USERNAME"], password=env["AIRFLOW_ADMIN_PASSWORD"],
                          log=workdir / "compose.log", mode="compose")
    airflow.log.write_text("(see the worker's and the scheduler's logs above)\n")
    stack_info = {"env": env, "run": run, "airflow": airflow, "state_dir": workdir / "state", "servers": []}
    t_all = time.monotonic()
    try:  # a failed `up` is torn down too
        t0 = time.monotonic()
        run("up", "-d", "--wait", "--wait-timeout", "600")
        timed("up --wait", t0)
        yield stack_info
    finally:
        # the model servers the deploy DAG started belong to no compose project: removed first, while
        # their network (the stack's) still exists to find them by
        servers = subprocess.run(["docker", "ps", "-aq", "--filter", "label=mlops-loop=serving",
                                  "--filter", "network=mlops-loop"], capture_output=True, text=True).stdout.split()
        servers += stack_info["servers"]  # seen by the tests (found above too, unless a down/up renewed the network)
        if servers:
            subprocess.run(["docker", "rm", "-f", *servers], capture_output=True)
        run("down", "-v", "--remove-orphans", check=False)
        timed("the whole test", t_all)
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


# --------------------------------------------------------------------------------------- the loop


def mlflow_api(path: str, **params) -> dict:
    r = httpx.get(f"http://{BIND}:5000/api/2.0/mlflow/{path}", params=params, timeout=30)
    r.raise_for_status()
    return r.json()


def registry() -> tuple[list[str], str | None]:
    """(MODEL's registered versions, the version its `champion` alias names), from the MLflow server."""
    versions = mlflow_api("model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    aliases = mlflow_api("registered-models/get", name=MODEL)["registered_model"].get("aliases", [])
    return sorted(v["version"] for v in versions), {a["alias"]: a["version"] for a in aliases}.get("champion")


def succeeded(stack, dag_id: str, run_id: str | None = None, timeout: float = 900, after: int = 0) -> dict:
    """The run (without run_id: dag_id's (after+1)-th run) once finished; a failure names its tasks and
    shows the worker's and the scheduler's logs."""
    airflow = stack["airflow"]
    try:
        run = airflow.wait_run(dag_id, run_id, after=after, timeout=timeout)
        states = airflow.task_states(dag_id, run["dag_run_id"])
    except TimeoutError as err:
        run, states = None, str(err)
    if run is None or run["state"] != "success":
        logs = stack["run"]("logs", "--tail", "60", "airflow-worker", "airflow-scheduler", check=False).stdout
        pytest.fail(f"{dag_id}: {run and run['state']}; tasks: {states}\n{logs[-8000:]}")
    return run


def test_loop_a_batch_landed_on_s3_is_ingested_on_the_worker(stack):
    import boto3

    from include.demo_data import make_batch, write_batch

    env = stack["env"]
    s3 = boto3.client("s3", endpoint_url=f"http://{BIND}:9000", region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    bucket = env["MLOPS_BUCKET"]
    t0 = time.monotonic()
    # docs/compose.md: a batch lands as landing/<dataset>/<file>.csv in MLOPS_BUCKET, with any S3 client
    s3.upload_file(str(write_batch(make_batch(0, 3000), stack["state_dir"].parent / "day000.csv")),
                   bucket, "landing/sessions/day000.csv")
    # the */5 schedule would take it too; triggering spares the wait (a scheduled run that comes
    # first takes the batch, and this one finds nothing: either way the batch leaves the landing zone)
    succeeded(stack, "ingest", stack["airflow"].trigger("ingest"), timeout=600)

    def archived():
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="landing/sessions/").get("Contents", [])]
        return keys if "landing/sessions/day000.csv" not in keys and any("_ingested/" in k for k in keys) else None

    poll(archived, "the ingested batch moves to landing/sessions/_ingested/", timeout=300)
    timed("ingest (land on S3 -> DVC commit on the worker)", t0)


def test_loop_train_on_the_mlflow_server_and_gate(stack):
    t0 = time.monotonic()
    # scheduled on the `dataset` Asset that ingest emitted: no trigger from the test
    train = succeeded(stack, "train")
    assert train["run_type"] == "asset_triggered"
    states = stack["airflow"].task_states("train", train["dag_run_id"])
    assert states.get("gate[0]") == "success", states
    versions, _ = registry()
    assert versions == ["1"], versions
    tags = mlflow_api("model-versions/get", name=MODEL, version="1")["model_version"].get("tags", [])
    assert {t["key"] for t in tags} >= {"data_rev", "dag_run_id"}, tags
    timed("train + gate (asset-triggered)", t0)


def test_loop_deploy_through_the_docker_engine_and_serve_through_the_edge(stack):
    from include.demo import serve_batch
    from include.demo_data import make_batch

    t0 = time.monotonic()
    deploy = succeeded(stack, "deploy")  # scheduled on the `model_candidate` Asset the gate emitted
    assert deploy["run_type"] == "asset_triggered"
    assert registry() == (["1"], "1")
    timed("deploy (asset-triggered: build, infra validation, switch, rollback window)", t0)
    t0 = time.monotonic()
    assert serve_batch(f"http://{BIND}:8700/models/{MODEL}", make_batch(1, 100)) == {"1": 100}
    timed("100 predictions through the edge", t0)

    def scraped():  # the deploy task wrote the model server's target: Prometheus scrapes it
        result = prometheus("/api/v1/query", query=f'up{{job="mlops-serving",model="{MODEL}",version="1"}}')["result"]
        return result if result and result[0]["value"][1] == "1" else None

    poll(scraped, "Prometheus scrapes the champion's model server", timeout=120)


def model_servers(name_filter: str = f"mlops-{MODEL}-v") -> list[str]:
    """Names of the running model servers the deploy DAG started (outside the compose project)."""
    return subprocess.run(["docker", "ps", "--format", "{{.Names}}", "--filter", "label=mlops-loop=serving",
                           "--filter", "network=mlops-loop", "--filter", f"name={name_filter}"],
                          capture_output=True, text=True, check=True).stdout.split()


def edge_health(stack) -> dict:
    """The edge's own /health (internal port 2020, never published): the models it has routes for."""
    out = stack["run"]("exec", "-T", "edge", "wget", "-q", "-O", "-", "http://127.0.0.1:2020/health", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def test_the_edge_keeps_its_routes_across_a_restart(stack):
    from include.demo import serve_batch
    from include.demo_data import make_batch

    assert edge_health(stack)["models"] == [MODEL]
    t0 = time.monotonic()
    stack["run"]("restart", "edge")
    # Caddy starts from the config the deploy loaded (autosaved in the edge-config volume, --resume),
    # not from the bootstrap one, which has no routes and answers every request with a 503
    poll(lambda: edge_health(stack).get("models") == [MODEL], "the restarted edge answers with its routes",
         timeout=120, every=1)
    assert serve_batch(f"http://{BIND}:8700/models/{MODEL}", make_batch(1, 100)) == {"1": 100}
    timed("edge restart -> predictions again, without a deploy", t0)


def prediction_log_rows(stack, since: float) -> int:
    """Rows the model servers logged (parquet parts in the shared state dir) in files written after `since`."""
    import pyarrow.parquet as pq

    parts = (stack["state_dir"] / "predictions" / MODEL).glob("date=*/part-*.parquet")
    return sum(pq.read_metadata(f).num_rows for f in parts if f.stat().st_mtime >= since)


def test_drifted_traffic_and_its_labels_make_monitor_drift_trigger_a_retrain(stack):
    import boto3

    from include.demo import serve_batch
    from include.demo_data import make_batch, write_batch

    airflow, env = stack["airflow"], stack["env"]
    t0, since = time.monotonic(), time.time()
    # the world changes: drifted sessions are served through the edge ...
    drifted = make_batch(2, 8000, covariate_drift=1.0, concept_drift=1.0)
    assert serve_batch(f"http://{BIND}:8700/models/{MODEL}", drifted.head(2000)) == {"1": 2000}
    # ... and their labels arrive in the next batch. `train` is paused while it is ingested, so the
    # batch's `dataset` Asset event schedules no run (Airflow queues none for a paused DAG): the
    # retrain under test is the one monitor_drift triggers, as in test_closed_loop
    airflow.set_paused("train", True)
    s3 = boto3.client("s3", endpoint_url=f"http://{BIND}:9000", region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.upload_file(str(write_batch(drifted, stack["state_dir"].parent / "day002.csv")),
                   env["MLOPS_BUCKET"], "landing/sessions/day002.csv")
    succeeded(stack, "ingest", airflow.trigger("ingest"), timeout=600)
    poll(lambda: "landing/sessions/day002.csv" not in [
        o["Key"] for o in s3.list_objects_v2(Bucket=env["MLOPS_BUCKET"], Prefix="landing/sessions/")["Contents"]],
         "the drifted batch is ingested (by this run or a scheduled one)", timeout=300)
    airflow.clear_queued_asset_events("train")
    airflow.set_paused("train", False)
    # the model server flushes its prediction log every 5 s (MLOPS_PREDLOG_FLUSH_SECONDS)
    poll(lambda: prediction_log_rows(stack, since) >= 2000, "the drifted requests in the prediction log", timeout=60)
    timed("drifted traffic + its labels ingested", t0)

    t0 = time.monotonic()
    monitor = airflow.trigger("monitor_drift", {"window_hours": 1})
    succeeded(stack, "monitor_drift", monitor, timeout=600)
    # exactly one drift retrain: this check's, unless a scheduled (hourly) check saw the drift first,
    # in which case this one met the daily cap of the test's policy
    drift_runs = [r for r in airflow.runs("train") if r["dag_run_id"].startswith("drift__")]
    assert len(drift_runs) == 1, [r["dag_run_id"] for r in drift_runs]
    conf = drift_runs[0]["conf"]
    assert conf["reason"] == "drift" and {"device", "channel"} & set(conf["drifted_features"]), conf
    assert conf["window_days"] == 1, conf
    stack["drift_train"] = drift_runs[0]["dag_run_id"]
    timed("monitor_drift (REST-triggered) -> drift retrain triggered", t0)


def test_restarting_the_scheduler_and_the_worker_mid_run_loses_nothing(stack):
    airflow, run_id = stack["airflow"], stack["drift_train"]
    state = next(r["state"] for r in airflow.runs("train") if r["dag_run_id"] == run_id)
    assert state in ("queued", "running"), f"the retrain ended ({state}) before the restart could interrupt it"
    t0 = time.monotonic()
    stack["run"]("restart", "airflow-scheduler", "airflow-worker")
    # a task the restart killed is failed by the restarted scheduler once its heartbeat is missed
    # (AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT) and retried; fit's retry reuses its
    # MLflow run and registers no second version
    succeeded(stack, "train", run_id, timeout=900)
    with airflow.client() as c:  # which tasks the restart interrupted (printed: it varies with timing)
        tis = c.get(f"/api/v2/dags/train/dagRuns/{quote(run_id, safe='')}/taskInstances").json()["task_instances"]
    print(f"compose e2e: tries of the retrain's tasks: { {t['task_id']: t['try_number'] for t in tis} }", flush=True)
    states = airflow.task_states("train", run_id)
    assert states.get("gate[0]") == "success", f"the gate rejected the retrain on the drifted data: {states}"
    assert registry()[0] == ["1", "2"]
    tags = {t["key"]: t["value"] for t in mlflow_api("model-versions/get", name=MODEL, version="2")
            ["model_version"].get("tags", [])}
    assert tags["reason"] == "drift" and tags["dag_run_id"] == run_id, tags
    timed("restart of scheduler + worker mid-run -> the retrain completes", t0)


def test_the_retrained_version_becomes_the_champion_through_a_canary(stack):
    from include.demo import Traffic, serve_batch
    from include.demo_data import make_batch

    t0 = time.monotonic()
    # users on the endpoint while deploy (on the `model_candidate` Asset the gate emitted) runs: the
    # canary (deploy_sessions.yaml: 10%) is judged on their requests
    traffic = Traffic(f"http://{BIND}:8700/models/{MODEL}", make_batch(3, 500, covariate_drift=1.0))
    traffic.start()
    try:
        deploy = succeeded(stack, "deploy", after=1, timeout=900)
    finally:
        print(f"compose e2e: traffic during the deploy: {traffic.stop()}", flush=True)
    assert deploy["run_type"] == "asset_triggered"
    assert registry() == (["1", "2"], "2")
    assert {"1", "2"} <= set(traffic.versions), f"both versions answered during the canary: {traffic.versions}"
    assert serve_batch(f"http://{BIND}:8700/models/{MODEL}", make_batch(4, 100, covariate_drift=1.0)) == {"2": 100}
    timed("deploy of the retrain (canary under traffic) -> v2 serves", t0)


def test_stopping_the_champion_fires_model_server_down(stack):
    champion = registry()[1]
    names = model_servers(f"mlops-{MODEL}-v{champion}-")
    assert len(names) == 1, f"the champion's model server: {names}"
    stack["servers"] += names
    t0 = time.monotonic()
    subprocess.run(["docker", "stop", names[0]], capture_output=True, check=True)

    def firing():
        alerts = prometheus("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ModelServerDown" and a["state"] == "firing"]

    poll(firing, "ModelServerDown fires", timeout=300, every=5)
    timed("champion stopped -> ModelServerDown firing", t0)


def test_down_then_up_keeps_the_model_versions_the_data_revision_and_the_champion(stack):
    from include.demo import serve_batch
    from include.demo_data import make_batch

    def data_rev() -> str:  # the dataset's revision in the DVC data repo, as the worker sees it (DataRepo.dataset_rev)
        return stack["run"]("exec", "-T", "airflow-worker", "git", "-C", f"{stack['state_dir']}/data-repo",
                            "log", "-1", "--format=%H", "HEAD", "--", "manifests/sessions.json").stdout.strip()

    before = registry(), data_rev()
    runs = {dag: [r["dag_run_id"] for r in stack["airflow"].runs(dag)] for dag in ("train", "deploy")}
    tags = {t["key"]: t["value"] for t in mlflow_api("model-versions/get", name=MODEL, version="2")
            ["model_version"].get("tags", [])}
    assert tags["data_rev"] == before[1], "version 2 was trained on the data repo's newest revision"
    # v1, the warm fallback, still runs: a container outside the project, attached to its network,
    # which `down` therefore leaves in place ("Resource is still in use") and `up` reuses
    fallback = model_servers(f"mlops-{MODEL}-v1-")
    assert len(fallback) == 1, f"the fallback's model server: {fallback}"
    stack["servers"] += fallback
    t0 = time.monotonic()
    stack["run"]("down")  # volumes kept: no -v
    stack["run"]("up", "-d", "--wait", "--wait-timeout", "600")
    timed("down + up --wait", t0)
    assert (registry(), data_rev()) == before and before[0] == (["1", "2"], "2")
    assert {dag: [r["dag_run_id"] for r in stack["airflow"].runs(dag)] for dag in runs} == runs
    # a new edge container, started from the config autosaved in the edge-config volume: it routes to
    # the running fallback (the champion's server was stopped above) with no new deploy
    assert edge_health(stack)["models"] == [MODEL]
    assert serve_batch(f"http://{BIND}:8700/models/{MODEL}", make_batch(5, 100)) == {"1": 100}
    print("compose e2e: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMES.items()))
