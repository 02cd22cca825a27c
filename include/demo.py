"""`make demo`: run the loop on the embedded stack (Airflow + MLflow on SQLite, DVC with a local
remote, all under ``state/``) and print what each stage did.

Each stage is a real DAG run (``dag.test()``: the tasks run in this process against the real
metadata DB). The demo lands two good daily batches and one broken batch, ingests them, trains on
the newest revision, gates it, deploys the champion behind the serving edge, Caddy (Docker when an engine
answers, else local processes), serves normal traffic (no drift), then drifted traffic whose
labels arrive in a later batch: monitor_drift fires, train runs on the new data, the gate passes
and the new champion is deployed. Re-running it is safe: ingested batches are no-ops, a
retrain of a recipe that already has a version (same data rev, code and config) trains nothing
("nothing new to train: vN already has this recipe", its gate skipped), a deployed champion is
not redeployed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from include.config import airflow_env, settings


def _prepare_env() -> None:
    os.environ.update(airflow_env())
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def _step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _migrate() -> None:
    s = settings()
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)


DEMO_DATASET = "sessions"


def _model() -> str:
    from include.catalog import model_for

    return model_for(DEMO_DATASET)


def land_demo_batches(days: range = range(2), n_rows: int = 2000, *, with_bad: bool = True) -> list[Path]:
    """Write the demo's daily batches (and one broken one) into the landing zone."""
    from include.demo_data import make_batch, write_batch
    from include.ingestion import landing_prefix

    landing = Path(landing_prefix(DEMO_DATASET))
    paths = []
    for day in days:
        paths.append(write_batch(make_batch(day, n_rows), landing / f"sessions-day{day:03d}.csv"))
    if with_bad:
        bad = make_batch(99, 500)
        bad.loc[:40, "pages_viewed"] = -5  # out of range: the GX gate must stop it
        bad.loc[:5, "device"] = "toaster"
        paths.append(write_batch(bad, landing / "sessions-broken.csv"))
    return paths


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    from include.config import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def _run(dag_id: str, conf: dict | None = None):
    t = time.perf_counter()
    dr = _dag(dag_id).test(run_conf=conf or {})
    states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
              for ti in dr.get_task_instances()}
    print(f"{dag_id}: run {dr.run_id} -> {dr.state} in {time.perf_counter() - t:.1f}s; tasks: {states}")
    return dr


def _demo_policies(s) -> Path:
    """The shipped policies with the drift cooldown off, so one demo shows the loop close.

    (In production the cooldown keeps a model that was just trained from being retrained again.)
    """
    from include.monitoring import policies_overlay

    return policies_overlay(s.state_dir / "demo-policies", cooldown_hours=0, max_retrains_per_day=100)


def serve_batch(url: str, batch, chunk: int = 50) -> dict[str, int]:
    """POST a batch's sessions to ``url``/predict in chunks; rows answered per model version."""
    import httpx

    from include.demo_data import as_requests

    rows = as_requests(batch)
    versions: dict[str, int] = {}
    with httpx.Client(timeout=30) as c:
        for i in range(0, len(rows), chunk):
            r = c.post(f"{url}/predict", json={"instances": rows[i:i + chunk]})
            if r.status_code != 200:
                raise RuntimeError(f"{url}/predict answered {r.status_code}: {r.text[:500]}")
            v = r.json()["model_version"]
            versions[v] = versions.get(v, 0) + len(rows[i:i + chunk])
    return versions


class Traffic(threading.Thread):
    """Sessions posted through the edge until stopped, as live users would (one row a request):
    a canary is judged on this traffic. Counts rows per answering version and failures."""

    def __init__(self, url: str, batch):
        super().__init__(daemon=True)
        from include.demo_data import as_requests

        self.url, self.rows = url, as_requests(batch)
        self.versions: dict[str, int] = {}
        self.failed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as c:
            i = 0
            while not self._stop_event.is_set():
                row = self.rows[i % len(self.rows)]
                i += 1
                try:
                    try:
                        r = c.post(f"{self.url}/predict", json={"instances": [row]})
                    except (httpx.RemoteProtocolError, httpx.ReadError):  # keep-alive closed at a route change
                        r = c.post(f"{self.url}/predict", json={"instances": [row]})
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if r.status_code != 200:
                    self.failed += 1
                    continue
                v = r.json()["model_version"]
                self.versions[v] = self.versions.get(v, 0) + 1

    def stop(self) -> str:
        self._stop_event.set()
        self.join(timeout=30)
        return f"{sum(self.versions.values())} requests answered by version {self.versions}, {self.failed} failed"


def _deploy_under_traffic(s, version: str, traffic_batch, policy: dict | None = None) -> object:
    """A deploy with users on the endpoint: the new version's canary is judged on their requests."""
    traffic = Traffic(s.gateway_url, traffic_batch)
    traffic.start()
    try:
        dr = _run("deploy", {"model": _model(), "version": version, **({"policy": policy} if policy else {})})
    finally:
        print(f"traffic during the deploy: {traffic.stop()}")
    from include.deployment import read_audit

    for rec in read_audit(s, _model()):
        if rec.get("version") == str(version) and rec.get("event") in ("canary_analysis", "rolled_back") \
                and (rec.get("trigger") or {}).get("dag_run_id") == dr.run_id:
            if rec["event"] == "canary_analysis":
                print(f"canary analysis of v{version} ({rec['weight']:.0%} of traffic, {rec['seconds']}s): "
                      f"{'PASSED' if rec['passed'] else 'FAILED'}; canary {rec['canary']}, champion {rec['champion']}, "
                      f"scores {rec['scores']}" + ("" if rec["passed"] else f"; reasons: {rec['reasons']}"))
            else:
                print(f"rolled back v{version} automatically: {rec['reason']}; serving v{rec['serving']}")
    return dr


def _deploy_a_bad_version(s) -> None:
    """A version with a bug (labels flipped in its training data) deployed by hand: the champion
    keeps serving while the canary's scores are compared, and the canary is rolled back."""
    from include.demo_data import make_batch
    from include.spec import load_spec
    from include.training.train import train_and_register

    spec = load_spec(DEMO_DATASET)
    buggy = make_batch(14, 3000, seed=5)
    buggy[spec.target] = 1 - buggy[spec.target]
    out = train_and_register(buggy, spec, family="logreg", seed=1, reason="demo: a bug flips the labels",
                             run_key="demo/bad-version",
                             lineage={"dataset": DEMO_DATASET, "data_rev": "unknown (demo bug)", "data_md5": "unknown",
                                      "validation_id": "unknown", "dag_run_id": "demo"})
    bad = str(out["version"])
    if bad == _alias(s, "champion"):
        return
    _step(f"deploy a bad version by hand (v{bad}, labels flipped by a bug) that should score like the "
          "champion: the canary analysis rolls it back")
    _deploy_under_traffic(s, bad, make_batch(15, 400, seed=11), policy={"analysis": {"max_score_ks": 0.3}})
    print(f"champion is still v{_alias(s, 'champion')}")


def _alias(s, alias: str) -> str | None:
    from include.tracking import alias_version, configure_mlflow

    configure_mlflow()
    return alias_version(_model(), alias)


def main() -> int:
    _prepare_env()
    os.environ.setdefault("MLOPS_POLICIES_DIR", "")
    s = settings()
    if not os.environ["MLOPS_POLICIES_DIR"]:
        os.environ["MLOPS_POLICIES_DIR"] = str(_demo_policies(s))
    os.environ.setdefault("MLOPS_PREDLOG_FLUSH_SECONDS", "0.5")
    # the policies' canary waits for minutes of real traffic; the demo's own traffic is judged in
    # seconds (half of it to the canary), and the rollback window is a few seconds
    os.environ.setdefault("MLOPS_DEPLOY_POLICY", json.dumps({
        "canary": {"weight": 0.5, "min_requests": 120, "min_seconds": 3, "max_seconds": 90},
        "analysis": {"score_min_rows": 100}, "rollback_window": {"seconds": 5}}))
    # no Docker needed: local model servers unless asked (MLOPS_DEPLOY_BACKEND=docker make demo)
    os.environ.setdefault("MLOPS_DEPLOY_BACKEND", "local")
    s = settings()
    print(f"state dir: {s.state_dir}\nMLflow: {s.mlflow_tracking_uri}\nDVC remote: {s.dvc_remote}")
    _step("initialising the embedded Airflow metadata DB")
    _migrate()

    _step("landing demo batches")
    for p in land_demo_batches():
        print(f"landed {p}")

    _step("ingest: validate (GX) -> quarantine bad batches -> dvc add/commit/push good ones")
    _run("ingest")
    from include.versioning import DataRepo

    repo = DataRepo(s)
    lineage = repo.lineage("sessions", "latest")
    print(f"dataset sessions @ {lineage['data_rev'][:10]} md5 {lineage['data_md5']} rows {lineage['rows']}")
    for q in sorted(Path(s.quarantine_dir).glob("*/report.md")) if Path(s.quarantine_dir).exists() else []:
        print(f"quarantined: {q.parent}  (report: {q})")

    _step("train: fit on the exact DVC rev, log to MLflow, register, gate vs champion")
    _run("train", {"dataset": DEMO_DATASET, "reason": "demo", "family": "logreg"})
    candidate = _alias(s, "challenger")
    if candidate and candidate != _alias(s, "champion"):
        _step(f"deploy v{candidate}: build, infra-validate, switch the edge, promote")
        _run("deploy", {"model": _model(), "version": candidate})
    champion = _alias(s, "champion")
    if champion is None:
        print("no champion: nothing to serve (see the gate decision above)")
        _summary(s)
        return 1

    from include.demo_data import make_batch, write_batch
    from include.ingestion import landing_prefix

    _step(f"serving: normal traffic through the edge {s.gateway_url}/models/{_model()}")
    print(f"served {serve_batch(s.gateway_url, make_batch(10, 600, seed=11))} rows per model version")
    time.sleep(1.5)  # the prediction log flushes every 0.5 s
    _step("monitor_drift on normal traffic: expect no retrain")
    _run("monitor_drift", {"window_hours": 1})

    _step("the world changes: drifted sessions are served, their labels land as a new batch")
    drifted = make_batch(12, 8000, seed=11, covariate_drift=1.0, concept_drift=1.0)
    print(f"served {serve_batch(s.gateway_url, drifted.head(2000))} rows per model version")
    write_batch(drifted, Path(landing_prefix(DEMO_DATASET)) / "sessions-day012-drifted.csv")
    _run("ingest")
    time.sleep(1.5)
    dr = _run("monitor_drift", {"window_hours": 1})
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        triggered = session.query(DagRun).filter(DagRun.dag_id == "train",
                                                 DagRun.run_id == f"drift__{dr.run_id}__{DEMO_DATASET}").one_or_none()
        conf = dict(triggered.conf) if triggered is not None else None
    if conf is None:
        print("monitor_drift did not trigger a retrain (see its decision above)")
    else:
        print(f"monitor_drift triggered train: reason={conf['reason']} drifted={conf['drifted_features']}")
        _step("train (the drift-triggered run, executed here in-process) -> gate vs the champion")
        _run("train", {**conf, "family": "logreg"})
        candidate = _alias(s, "challenger")
        if candidate and candidate != _alias(s, "champion"):
            _step(f"deploy v{candidate}: canary next to v{_alias(s, 'champion')} under live traffic, "
                  "analysis, promote, rollback window")
            _deploy_under_traffic(s, candidate, make_batch(13, 400, seed=12, covariate_drift=1.0))
        print(f"served {serve_batch(s.gateway_url, make_batch(13, 200, seed=11, covariate_drift=1.0))} "
              "rows per model version after the retrain")
    _deploy_a_bad_version(s)
    _show_lineage(s)
    leave_nothing_queued()
    _summary(s)
    return 0


def leave_nothing_queued() -> None:
    """Forget what the demo's in-process runs queued for a scheduler.

    dag.test runs each stage here, but the Asset events it emits still queue asset-triggered
    `train`/`deploy` runs, and monitor_drift's trigger queues the drift retrain the demo already ran
    in-process: the next scheduler started on this state would run them all again (a duplicate of
    the champion, same data rev).
    """
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        events = session.query(AssetDagRunQueue).delete()
        queued = session.query(DagRun).filter(DagRun.state == DagRunState.QUEUED).all()
        for run in queued:
            session.delete(run)
    if events or queued:
        print(f"forgot {events} queued Asset trigger(s) and {len(queued)} queued run(s) the in-process runs "
              f"left for a scheduler: {[r.run_id for r in queued]}")


def _show_lineage(s) -> None:
    """One served prediction traced back to its data, validation, code and decisions."""
    import httpx

    from include.demo_data import as_requests, make_batch
    from include.lineage import LineageError, trace_prediction

    r = httpx.post(f"{s.gateway_url}/predict", json={"instance": as_requests(make_batch(20, 1, seed=11))[0]},
                   timeout=30)
    if r.status_code != 200:
        return
    request_id = r.json()["request_id"]
    _step(f"lineage of one prediction (request {request_id})")
    deadline = time.time() + 10
    while True:
        try:
            trace = trace_prediction(request_id)
            break
        except LineageError:
            if time.time() > deadline:
                print("the prediction log has not been flushed yet; try `lineage --request-id` later")
                return
            time.sleep(0.5)
    lin = trace["lineage"][0]
    print(f"prediction {trace['rows'][0]['prediction']:.3f} by {lin['model']} v{lin['version']}, trained on "
          f"{lin['data']['dataset']} @ {lin['data']['data_rev'][:10]} (md5 {lin['data']['data_md5']}, "
          f"{len(lin['data'].get('batches_validation_ids', []))} validated batches), code {lin['code']['code_sha'][:10]}, "
          f"reason {lin['training']['reason']!r}, gate {lin['gate']['decision']}, "
          f"{len(lin['deployments'])} deployment record(s)")
    print(f"full record: .venv/bin/lineage --request-id {request_id}")


def _summary(s) -> None:
    from include.tracking import client, configure_mlflow

    configure_mlflow()
    c = client()
    _step("summary")
    try:
        versions = c.search_model_versions(f"name='{_model()}'")
    except Exception as err:  # noqa: BLE001 - a summary must not hide the run's own result
        print(f"no registered model yet ({err})")
        return
    for v in sorted(versions, key=lambda v: int(v.version)):
        v = c.get_model_version(_model(), v.version)  # search results carry no aliases
        tags = v.tags
        print(f"{_model()} v{v.version}: gate={tags.get('gate_decision', '-')} "
              f"data_rev={tags.get('data_rev', '?')[:10]} family={tags.get('family', '?')} "
              f"reason={tags.get('reason', '?')} aliases={list(v.aliases)}")
    print(f"champion: v{_alias(s, 'champion')}, serving at {s.gateway_url}/models/{_model()}/predict "
          f"(request schema: {s.gateway_url}/models/{_model()}/schema; stop the servers with `make stop`)")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {s.mlflow_tracking_uri}")
    from include.recordlog import deploy_audit_log, gate_audit_log

    print(f"audit logs: {gate_audit_log(s=s).path} (gate), {deploy_audit_log(s=s).path} (deploy)")


if __name__ == "__main__":
    sys.exit(main())
