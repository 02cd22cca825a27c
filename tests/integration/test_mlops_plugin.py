"""The MLOps page's API (plugins/mlops_plugin.py -> include/ui/app.py) on a real Airflow API server
(`airflow standalone`, tests/e2e/live.py) with real records from a short loop (land, ingest, train,
a failed deploy rolled back, deploy, predict, drift check: tests/integration/mlops_loop.py; the same
stack as the browser test, the session fixture `mlops_loop`): each endpoint's content, the auth refusal, and
MLflow down -> a clear "unavailable" within the timeout (a second API server on the same Airflow
whose MLflow is a socket that never answers)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.e2e.live import VENV_BIN, _kill, _spawn
from tests.integration.mlops_loop import DATASET, MODEL, SERVED_ROWS
from tests.services import free_port, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENDPOINTS = ("/mlops/", "/mlops/api/overview", f"/mlops/api/models/{MODEL}/versions", "/mlops/api/timeline",
             "/mlops/api/drift", "/mlops/api/lineage?request_id=x", f"/mlops/api/models/{MODEL}/versions/1/card",
             "/mlops/api/drift/report?path=x.html")


@pytest.fixture(scope="module")
def loop(mlops_loop):
    live, facts = mlops_loop
    with live.client() as c:
        yield live, c, facts


def test_every_endpoint_refuses_a_request_without_a_valid_token(loop):
    live, _, _ = loop
    for path in ENDPOINTS:
        anonymous = httpx.get(f"{live.url}{path}", timeout=30)
        assert anonymous.status_code == 401, (path, anonymous.status_code, anonymous.text[:200])
        forged = httpx.get(f"{live.url}{path}", headers={"Authorization": "Bearer not.a.jwt"}, timeout=30)
        assert forged.status_code in (401, 403), (path, forged.status_code, forged.text[:200])
        assert MODEL not in anonymous.text and MODEL not in forged.text


def test_the_page_is_in_airflows_navigation(loop):
    _, c, _ = loop
    plugins = c.get("/api/v2/plugins").json()["plugins"]
    mine = next(p for p in plugins if p["name"] == "mlops")
    assert mine["external_views"][0]["href"] == "/mlops/" and mine["external_views"][0]["url_route"] == "mlops"
    assert mine["fastapi_apps"][0]["url_prefix"] == "/mlops"


def test_overview_shows_champion_serving_and_last_ingest(loop):
    _, c, facts = loop
    r = c.get("/mlops/api/overview")
    assert r.status_code == 200, r.text
    row = next(d for d in r.json()["datasets"] if d["dataset"] == DATASET)
    assert row["model"] == MODEL and row["registry"]["available"]
    assert row["champion"] == facts["version"]
    assert row["serving"]["active"]["version"] == facts["version"]
    assert row["last_ingest"]["success"] is True and row["last_ingest"]["rows"] == 3000
    other = next(d for d in r.json()["datasets"] if d["dataset"] != DATASET)
    assert other["champion"] is None and other["last_ingest"] is None  # nothing of it was recorded


def test_versions_show_metrics_gate_decision_lineage_and_the_user(loop):
    _, c, facts = loop
    r = c.get(f"/mlops/api/models/{MODEL}/versions")
    assert r.status_code == 200, r.text
    v = next(x for x in r.json()["versions"] if x["version"] == facts["version"])
    assert "champion" in v["aliases"] and v["metrics"]["roc_auc"] > 0.5
    assert any(k.startswith("roc_auc__device.") for k in v["slice_metrics"])
    assert v["gate"]["decision"] == "passed" and v["gate"]["reasons"]
    assert v["gate"]["trigger"]["user"] == "admin"  # the gate record names who triggered the run
    assert v["lineage"]["data_rev"] == facts["tags"]["data_rev"] and v["lineage"]["code_sha"]
    assert v["lineage"]["dag_run_id"] == facts["train_run"] and v["lineage"]["reason"] == "ui-test: first model"
    assert v["lineage"]["trigger_user"] == "admin"
    assert v["model_card"].endswith("model_card/model_card.md")
    assert c.get("/mlops/api/models/nope/versions").status_code == 404


def test_model_card_is_served(loop):
    _, c, facts = loop
    r = c.get(f"/mlops/api/models/{MODEL}/versions/{facts['version']}/card")
    assert r.status_code == 200, r.text
    assert f"Model card: {MODEL} v{facts['version']}" in r.text and facts["tags"]["data_rev"] in r.text
    assert "passed" in r.text


def test_timeline_newest_first_with_the_users_and_a_dataset_filter(loop):
    _, c, facts = loop
    events = c.get("/mlops/api/timeline", params={"dataset": DATASET}).json()["events"]
    kinds = [e["kind"] for e in events]
    assert {"ingest", "trained", "gate", "rollback", "deploy", "drift_check"} <= set(kinds), kinds
    # newest first
    assert kinds.index("drift_check") < kinds.index("deploy") < kinds.index("rollback") < kinds.index("gate") \
        < kinds.index("ingest")
    deploy = next(e for e in events if e["kind"] == "deploy")
    assert deploy["detail"]["trigger"]["user"] == "admin" and deploy["detail"]["trigger"]["dag_run_id"] == facts["deploy_run"]
    assert "by admin" in deploy["summary"]
    # the failed deploy's rollback, recorded by the deploy DAG's rollback task with who triggered it
    rollback = next(e for e in events if e["kind"] == "rollback")
    assert rollback["detail"]["trigger"]["dag_run_id"] == facts["failed_deploy_run"]
    assert rollback["detail"]["by"] == "admin" and rollback["summary"].endswith(" by admin")
    assert f"{MODEL} v{facts['version']} rolled back: a deploy step failed" in rollback["summary"]
    assert c.get("/mlops/api/timeline", params={"dataset": "deliveries"}).json()["events"] == []
    assert c.get("/mlops/api/timeline", params={"dataset": "nope"}).status_code == 404


def test_drift_history_serves_the_evidently_report_and_nothing_outside_the_reports_dir(loop):
    live, c, facts = loop
    checks = c.get("/mlops/api/drift", params={"dataset": DATASET}).json()["checks"]
    mine = [ch for ch in checks if ch["n_current"] == SERVED_ROWS]  # (a scheduled check may be there too)
    assert mine and str(mine[0]["model_version"]) == facts["version"] and mine[0]["report"], checks
    report = c.get("/mlops/api/drift/report", params={"path": mine[0]["report"]})
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    # the check's own Evidently HTML, byte for byte (its text is a minified bundle: nothing to grep)
    assert report.content == (live.state_dir / "reports" / "drift" / mine[0]["report"]).read_bytes()
    assert c.get("/mlops/api/drift", params={"dataset": "deliveries"}).json()["checks"] == []
    for bad in ("../audit.jsonl", "/etc/passwd", "../../../../etc/hostname"):
        assert c.get("/mlops/api/drift/report", params={"path": bad}).status_code == 404


def test_lineage_search_by_request_id(loop):
    _, c, facts = loop
    r = c.get("/mlops/api/lineage", params={"request_id": facts["request_id"]})
    assert r.status_code == 200, r.text
    lin = r.json()["lineage"][0]
    assert lin["version"] == facts["version"] and lin["data"]["data_rev"] == facts["tags"]["data_rev"]
    assert lin["trigger"]["user"] == "admin"
    assert any(d["event"] == "deployed" for d in lin["deployments"])
    assert c.get("/mlops/api/lineage", params={"request_id": "no-such-request"}).status_code == 404
    assert c.get("/mlops/api/lineage").status_code == 422


def test_page_shows_champion_and_gate_decision(loop):
    _, c, facts = loop
    r = c.get("/mlops/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f"<td class=champion>v{facts['version']}</td>" in r.text
    assert "<b class='passed'>passed</b>" in r.text and "<table id=timeline>" in r.text


def _black_hole() -> socket.socket:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_mlflow_down_gives_unavailable_not_a_hang(loop):
    live, _, facts = loop
    hole = _black_hole()
    port = free_port()
    env = {**live.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{hole.getsockname()[1]}",
           "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{hole.getsockname()[1]}", "MLOPS_UI_STORE_TIMEOUT_S": "3",
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"}
    proc = _spawn([str(VENV_BIN / "airflow"), "api-server", "--port", str(port)], env, live.state_dir / "api2.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/v2/monitor/health", timeout=180, proc=proc)
        token = httpx.post(f"{url}/auth/token", json={"username": live.username, "password": live.password},
                           timeout=60).json()["access_token"]
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
            t0 = time.time()
            ov = c.get("/mlops/api/overview")
            took = time.time() - t0
            assert ov.status_code == 200, ov.text
            row = next(d for d in ov.json()["datasets"] if d["dataset"] == DATASET)
            assert row["registry"]["available"] is False and "no answer within 3 s" in row["registry"]["error"]
            assert row["last_ingest"]["rows"] == 3000  # what does not need MLflow is still shown
            assert took < 30, f"overview took {took:.1f} s with MLflow down"
            vs = c.get(f"/mlops/api/models/{MODEL}/versions").json()
            assert vs["registry"]["available"] is False
            assert vs["versions"][0]["gate"]["decision"] == "passed"  # from the audit log
            card = c.get(f"/mlops/api/models/{MODEL}/versions/{facts['version']}/card")
            assert card.status_code == 503 and "unavailable" in card.text
            page = c.get("/mlops/")
            assert page.status_code == 200 and "class=unavailable" in page.text
            print(f"[mlops-plugin] overview with MLflow down answered in {took:.1f} s")
    finally:
        _kill([proc])
        hole.close()
