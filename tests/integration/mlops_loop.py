"""A short real loop on a live Airflow (tests/e2e/live.py), shared by the MLOps page's API tests and
its browser test (one stack for both: the session fixture ``mlops_loop`` in tests/conftest.py):
land one batch, ingest, train (triggered by the admin user, so the version and the gate record name
who did it), a deploy that fails (a bad policy override) and is rolled back by the deploy DAG's
`rollback` task, the deploy that succeeds, predictions through the edge, and a `monitor_drift`
check of them (an Evidently report). Returns what the page should show."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from include.demo_data import as_requests, make_batch, write_batch

DATASET = "sessions"
MODEL = "sessions_purchase"
LOOP_DAGS = ("ingest", "train", "deploy", "monitor_drift")
# one drift check needs min_sample_size (include/policies/drift_sessions.yaml) served rows
SERVED_ROWS = 600
# generous: on 2 cores shared with other jobs one DAG run can take minutes (unpausing ingest also
# starts its latest scheduled run, which the manual run waits behind)
RUN_TIMEOUT = 900


@contextmanager
def loop_stack(state: Path):
    """A live embedded Airflow whose DAGs start paused, with the short loop below run on it."""
    from tests.e2e.live import live_stack

    with live_stack("embedded", state, dag_ids=LOOP_DAGS,
                    extra_env={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}) as live:
        facts = run_short_loop(live)
        print(f"[mlops-loop] short loop (ingest, train, failed deploy + rollback, deploy, predict, drift check) "
              f"took {facts['loop_s']} s")
        yield live, facts


def run_short_loop(live) -> dict:
    write_batch(make_batch(0, 3000), live.state_dir / "landing" / DATASET / "day000.csv")
    t0 = time.time()
    live.set_paused("ingest", False)
    ingest = live.wait_run("ingest", live.trigger("ingest"), timeout=RUN_TIMEOUT)
    assert ingest["state"] == "success", live.task_states("ingest", ingest["dag_run_id"])
    live.set_paused("ingest", True)  # the batch is in: no schedule ticks meanwhile
    # train and deploy are triggered by the user below, not by the Assets: drop the queued events
    for dag_id in ("train", "deploy"):
        live.set_paused(dag_id, True)
        live.clear_queued_asset_events(dag_id)
    live.set_paused("train", False)
    train = live.wait_run("train", live.trigger("train", {"dataset": DATASET, "reason": "ui-test: first model"}),
                          timeout=RUN_TIMEOUT)
    assert train["state"] == "success", live.task_states("train", train["dag_run_id"])
    versions = json.loads(live.python(
        "import json; from include.tracking import client; "
        f"print(json.dumps([{{'version': str(v.version), 'tags': v.tags}} for v in "
        f"client().search_model_versions(\"name='{MODEL}'\")]))"))
    version = next(v for v in versions if v["tags"].get("dag_run_id") == train["dag_run_id"])
    live.clear_queued_asset_events("deploy")
    live.set_paused("deploy", False)
    # a deploy whose policy override is invalid fails at switch_traffic (not retried); the DAG's
    # rollback task undoes it and audits a rollback by the user who triggered the run
    failed = live.wait_run("deploy", live.trigger("deploy", {
        "dataset": DATASET, "version": version["version"], "policy": {"canary": {"weight": 2}}}), timeout=RUN_TIMEOUT)
    states = live.task_states("deploy", failed["dag_run_id"])
    # the rollback task fails its run after undoing (it ran: not skipped nor upstream_failed)
    assert failed["state"] == "failed" and states.get("release.switch_traffic[0]") == "failed" \
        and states.get("release.rollback[0]") in ("success", "failed"), states
    deploy = live.wait_run("deploy", live.trigger("deploy", {
        "dataset": DATASET, "version": version["version"], "policy": {"rollback_window": {"seconds": 2}}}),
        timeout=RUN_TIMEOUT)
    assert deploy["state"] == "success", live.task_states("deploy", deploy["dag_run_id"])
    # predictions through the edge: their request id leads back to the version, and they are the
    # served window of the drift check below
    r = httpx.post(f"http://127.0.0.1:{live.env['MLOPS_SERVING_PORT']}/models/{MODEL}/predict",
                   json={"instances": as_requests(make_batch(1, SERVED_ROWS))}, timeout=60)
    assert r.status_code == 200, r.text
    request_id = r.headers.get("x-request-id") or r.json().get("request_id")
    assert request_id, r.headers
    _wait_until_logged(live.state_dir / "predictions", request_id, SERVED_ROWS)
    for dag_id in ("train", "deploy"):
        live.set_paused(dag_id, True)  # a retrain the drift check may ask for stays queued
    live.set_paused("monitor_drift", False)
    drift = live.wait_run("monitor_drift", live.trigger("monitor_drift", {"dataset": DATASET, "window_hours": 1}),
                          timeout=RUN_TIMEOUT)
    assert drift["state"] == "success", live.task_states("monitor_drift", drift["dag_run_id"])
    live.set_paused("monitor_drift", True)
    return {"version": version["version"], "tags": version["tags"], "train_run": train["dag_run_id"],
            "deploy_run": deploy["dag_run_id"], "failed_deploy_run": failed["dag_run_id"],
            "drift_run": drift["dag_run_id"], "ingest_run": ingest["dag_run_id"], "request_id": request_id,
            "loop_s": round(time.time() - t0, 1)}


def _wait_until_logged(predictions_dir: Path, request_id: str, rows: int, timeout: float = 60) -> None:
    """Until the model server has flushed all ``rows`` of the request to its prediction log (the
    drift check reads that log, so it must not start before)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from include.serving.predlog import list_files

    deadline = time.monotonic() + timeout
    logged = 0
    while time.monotonic() < deadline:
        files = list_files(predictions_dir, MODEL)
        if files:
            logged = ds.dataset([str(f) for f in files], format="parquet").count_rows(
                filter=pc.field("request_id") == request_id)
            if logged >= rows:
                return
        time.sleep(0.2)
    raise AssertionError(f"{logged} of {rows} rows of request {request_id} in the prediction log "
                         f"under {predictions_dir} after {timeout:.0f} s")
