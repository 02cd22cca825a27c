"""Task outcomes reach a real Pushgateway (Debian's prometheus-pushgateway) with their labels.

include/metrics_push.py is called from the record points (drift check, gate, deploy, quarantine)
and from the DAG-run listener (plugins/mlops_metrics.py); here each push is read back from the
gateway's own /metrics, the way Prometheus scrapes it (honor_labels). A gateway that is down or
not configured never fails the caller.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from include import metrics_push
from tests.services import free_port, unavailable, wait_http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway():
    binary = shutil.which("prometheus-pushgateway")
    if not binary:
        unavailable("prometheus-pushgateway is not installed (tools/debian_tools.sh)")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--web.enable-admin-api"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def pushing(gateway, monkeypatch):
    httpx.put(gateway + "/api/v1/admin/wipe").raise_for_status()
    monkeypatch.setenv(metrics_push.ENV, gateway)
    return gateway


def scraped(gateway: str) -> dict[str, list]:
    """name -> [(labels, value)] of everything the gateway serves, minus its own process metrics."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(httpx.get(gateway + "/metrics").text):
        for s in family.samples:
            if s.name.startswith("mlops_") or s.name == "push_failure_time_seconds":
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def only(samples: list, **labels) -> float:
    hits = [v for lab, v in samples if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(hits) == 1, f"{labels}: {samples}"
    return hits[0]


DRIFT = {"dataset": "sessions", "model_name": "sessions_purchase", "model_version": "3", "at": "2026-11-28T08:00:00+00:00",
         "share_drifted": 0.5, "drifted_features": ["pages_viewed"], "n_current_total": 800,
         "decision": {"retrain": True, "code": "drift", "drift_detected": True}}


def test_each_record_point_arrives_labelled_by_dataset_and_model(pushing):
    group = {"dataset": "sessions", "model": "sessions_purchase"}
    assert metrics_push.drift_outcome(DRIFT, features=["device", "pages_viewed"])
    assert metrics_push.gate_outcome({"dataset": "sessions", "model": "sessions_purchase", "version": "4",
                                      "decision": "passed", "decided_at": "2026-11-28T08:01:00+00:00"})
    assert metrics_push.deploy_outcome("sessions_purchase", "4", "deployed")  # dataset found from the specs
    assert metrics_push.deploy_outcome("sessions_purchase", "4", "rolled_back", dataset="sessions")
    assert metrics_push.quarantine_outcome("sessions", "missing_columns", rows=12)
    assert metrics_push.dag_run_outcome("ingest", "failed", 1_790_000_000.0)
    m = scraped(pushing)

    assert only(m["mlops_drift_share"], job="mlops_drift", version="3", **group) == 0.5
    assert only(m["mlops_drift_feature_drifted"], feature="pages_viewed", **group) == 1
    assert only(m["mlops_drift_feature_drifted"], feature="device", **group) == 0
    assert only(m["mlops_drift_decision"], code="drift", **group) == 1
    assert only(m["mlops_drift_decision"], code="cooldown", **group) == 0
    assert only(m["mlops_drift_retrain_timestamp_seconds"], **group) == 1_795_852_800.0  # the check's own time
    assert only(m["mlops_gate_passed"], job="mlops_gate", **group) == 1
    assert only(m["mlops_gate_decision"], decision="passed", **group) == 1
    assert only(m["mlops_gate_version"], **group) == 4
    assert only(m["mlops_deploy_champion_version"], job="mlops_deploy", **group) == 4
    assert only(m["mlops_deploy_rollback_version"], job="mlops_deploy", **group) == 4
    assert only(m["mlops_validation_quarantine_rows"], job="mlops_validation", **group) == 12
    assert only(m["mlops_validation_quarantine_kind"], kind="missing_columns", **group) == 1
    assert only(m["mlops_dag_run_failure_timestamp_seconds"], job="mlops_dag_runs", dag_id="ingest") == 1_790_000_000
    assert all(v == 0 for _, v in m["push_failure_time_seconds"]), "the gateway refused a push"


def test_a_later_push_replaces_its_own_metrics_and_keeps_the_others(pushing):
    group = {"dataset": "sessions", "model": "sessions_purchase"}
    metrics_push.drift_outcome(DRIFT, features=["device", "pages_viewed"])
    later = {**DRIFT, "at": "2026-11-28T09:00:00+00:00", "share_drifted": 0.5,
             "decision": {"retrain": False, "code": "cooldown", "drift_detected": True}}
    assert metrics_push.drift_outcome(later, features=["device", "pages_viewed"])
    m = scraped(pushing)
    assert only(m["mlops_drift_decision"], code="cooldown", **group) == 1
    assert only(m["mlops_drift_decision"], code="drift", **group) == 0
    assert only(m["mlops_drift_retrain"], **group) == 0
    # the retrain an hour earlier is still the last one (RetrainStorm counts its changes)
    assert only(m["mlops_drift_retrain_timestamp_seconds"], **group) == 1_795_852_800.0
    assert only(m["mlops_drift_suppressed_timestamp_seconds"], code="cooldown", **group) == 1_795_856_400.0


def test_down_or_unset_gateway_never_fails_the_caller(gateway, monkeypatch, caplog):
    monkeypatch.delenv(metrics_push.ENV, raising=False)
    assert metrics_push.drift_outcome(DRIFT) is False  # not configured: nothing is pushed, nothing logged
    monkeypatch.setenv(metrics_push.ENV, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="include.metrics_push"):
        assert metrics_push.gate_outcome({"dataset": "sessions", "model": "sessions_purchase", "version": "4",
                                          "decision": "passed"}) is False
        assert metrics_push.drift_outcome({"decision": "not a dict"}) is False  # a malformed record too
    assert "the task goes on" in caplog.text


def test_serving_targets_follow_the_edge_routes(tmp_path, monkeypatch):
    target = tmp_path / "targets" / "serving.json"
    monkeypatch.setenv(metrics_push.TARGETS_ENV, str(target))
    up = {"url": "http://mlops-serving-sessions-v3:8000", "version": "3"}
    canary = {"url": "http://mlops-serving-sessions-v4:8000", "version": "4"}
    assert metrics_push.write_serving_targets(
        {"models": {"sessions_purchase": {"active": up, "fallback": None, "canary": {"upstream": canary, "weight": 0.1}}}})
    assert json.loads(target.read_text()) == [
        {"targets": ["mlops-serving-sessions-v3:8000"], "labels": {"model": "sessions_purchase", "version": "3",
                                                                   "role": "active"}},
        {"targets": ["mlops-serving-sessions-v4:8000"], "labels": {"model": "sessions_purchase", "version": "4",
                                                                   "role": "canary"}}]
    monkeypatch.delenv(metrics_push.TARGETS_ENV)
    assert metrics_push.write_serving_targets({"models": {}}) is False


def test_record_points_push_a_quarantine_and_write_the_targets(pushing, state, monkeypatch, tmp_path):
    """The real call sites: ingest quarantining a bad batch, and the edge writing its routes."""
    from include.edge import clear
    from include.ingestion import validate_landed
    from include.validation import BatchRejected

    bad = Path(state.landing) / "sessions" / "bad.csv"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("session_id,device\ns1,mobile\n")
    with pytest.raises(BatchRejected):
        validate_landed(str(bad), "sessions")
    m = scraped(pushing)
    kinds = [lab["kind"] for lab, v in m["mlops_validation_quarantine_kind"]
             if lab["dataset"] == "sessions" and lab["model"] == "sessions_purchase" and v == 1]
    assert len(kinds) == 1 and kinds[0] != "", m["mlops_validation_quarantine_kind"]

    target = tmp_path / "targets.json"
    monkeypatch.setenv(metrics_push.TARGETS_ENV, str(target))
    clear(state)  # every route forgotten: Prometheus is told to scrape no model server
    assert json.loads(target.read_text()) == []


@pytest.mark.slow
def test_a_failed_dag_run_is_pushed_by_the_listener(pushing, airflow_db, state):
    """plugins/mlops_metrics.py: Airflow calls the listener when a run ends (a real dag.test run of
    `train` that fails at once: no dataset has data yet)."""
    from tests.dagrun import run_dag

    dr = run_dag("train", {"reason": "test"})
    assert str(dr.state) == "failed"
    m = scraped(pushing)
    when = only(m["mlops_dag_run_failure_timestamp_seconds"], job="mlops_dag_runs", dag_id="train")
    assert abs(when - dr.end_date.timestamp()) < 1
