"""A short real loop on a live Airflow (tests/e2e/live.py), shared by the MLOps page's API tests and
its browser test: land one batch, ingest, train (triggered by the admin user, so the version and
the gate record name who did it), deploy that version (same), send a few predictions through the
edge. Returns what the page should show."""

from __future__ import annotations

import json
import time

import httpx

from include.demo_data import as_requests, make_batch, write_batch

DATASET = "sessions"
MODEL = "sessions_purchase"
LOOP_DAGS = ("ingest", "train", "deploy")


def run_short_loop(live) -> dict:
    write_batch(make_batch(0, 3000), live.state_dir / "landing" / DATASET / "day000.csv")
    t0 = time.time()
    live.set_paused("ingest", False)
    ingest = live.wait_run("ingest", live.trigger("ingest"), timeout=300)
    assert ingest["state"] == "success", live.task_states("ingest", ingest["dag_run_id"])
    live.set_paused("ingest", True)  # the batch is in: no schedule ticks meanwhile
    # train and deploy are triggered by the user below, not by the Assets: drop the queued events
    for dag_id in ("train", "deploy"):
        live.set_paused(dag_id, True)
        live.clear_queued_asset_events(dag_id)
    live.set_paused("train", False)
    train = live.wait_run("train", live.trigger("train", {"dataset": DATASET, "reason": "ui-test: first model"}),
                          timeout=480)
    assert train["state"] == "success", live.task_states("train", train["dag_run_id"])
    versions = json.loads(live.python(
        "import json; from include.tracking import client; "
        f"print(json.dumps([{{'version': str(v.version), 'tags': v.tags}} for v in "
        f"client().search_model_versions(\"name='{MODEL}'\")]))"))
    version = next(v for v in versions if v["tags"].get("dag_run_id") == train["dag_run_id"])
    live.clear_queued_asset_events("deploy")
    live.set_paused("deploy", False)
    deploy = live.wait_run("deploy", live.trigger("deploy", {"dataset": DATASET, "version": version["version"]}),
                           timeout=480)
    assert deploy["state"] == "success", live.task_states("deploy", deploy["dag_run_id"])
    for dag_id in LOOP_DAGS:
        live.set_paused(dag_id, True)
    # a few predictions through the edge: their request ids lead back to the version
    r = httpx.post(f"http://127.0.0.1:{live.env['MLOPS_SERVING_PORT']}/models/{MODEL}/predict",
                   json={"instances": as_requests(make_batch(1, 3))}, timeout=30)
    assert r.status_code == 200, r.text
    request_id = r.headers.get("x-request-id") or r.json().get("request_id")
    time.sleep(1.5)  # prediction-log flush
    return {"version": version["version"], "tags": version["tags"], "train_run": train["dag_run_id"],
            "deploy_run": deploy["dag_run_id"], "ingest_run": ingest["dag_run_id"], "request_id": request_id,
            "loop_s": round(time.time() - t0, 1)}
