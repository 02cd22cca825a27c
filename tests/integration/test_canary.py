"""Progressive delivery on the live path: real Airflow (dag.test), real MLflow, real model servers
(local backend) behind a real Caddy, with client traffic running through the edge the whole time.

* a canary whose scores differ from the champion's is judged on that traffic and rolled back by
  itself: the reason is audited and `champion` never moves;
* kill -9 of the new champion inside its rollback window: the edge serves the warm previous
  champion, the alias follows it, and no request fails after the first health interval.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from include.demo_data import make_batch
from tests.integration.test_deploy import Load, _champion
from tests.services import SESSIONS_MODEL, serving_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def local_deploy(airflow_db, state, monkeypatch):
    from include.deployment import stop_all

    yield serving_env(monkeypatch, state, "local")
    stop_all()


def _train(day: int, *, flip_labels: bool = False) -> str:
    from include.spec import load_spec
    from include.training.train import train_and_register

    spec = load_spec("sessions")
    df = make_batch(day, 1500)
    if flip_labels:  # a model that ranks visitors backwards: its scores are another distribution
        df[spec.target] = 1 - df[spec.target]
    out = train_and_register(df, spec, family="logreg", seed=1, reason="test",
                             run_key=f"canary-test-{day}-{flip_labels}",
                             lineage={"dataset": "sessions", "data_rev": "unknown", "data_md5": "unknown",
                                      "validation_id": "unknown", "dag_run_id": "test"})
    return str(out["version"])


def _deploy(conf: dict):
    from tests.dagrun import run_dag

    dr = run_dag("deploy", {"model": SESSIONS_MODEL, **conf})
    return dr, {ti.task_id.rsplit(".", 1)[-1]: str(ti.state) for ti in dr.get_task_instances()}


def _audit(s) -> list[dict]:
    path = Path(s.reports_dir) / "deployments.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_canary_with_shifted_scores_is_rolled_back_by_its_analysis(local_deploy):
    s = local_deploy
    v1, bad = _train(0), _train(1, flip_labels=True)
    dr, states = _deploy({"version": v1})
    assert str(dr.state) == "success", states

    load = Load(s.gateway_url, workers=3)
    load.start()
    try:
        # half the traffic, judged after 150 canary requests with 100 logged scores a side
        dr, states = _deploy({"version": bad, "policy": {
            "canary": {"weight": 0.5, "min_requests": 150, "min_seconds": 3, "max_seconds": 120},
            "analysis": {"score_min_rows": 100, "max_score_ks": 0.2}}})
    finally:
        load.stop()

    assert str(dr.state) == "failed", states
    assert states["analyze_canary"] == "failed" and states["promote"] == "upstream_failed", states
    assert _champion() == v1
    assert load.failed == 0, load.errors[:5]
    assert bad in load.versions, "the canary never answered a request"
    records = _audit(s)
    analysis = [r for r in records if r["event"] == "canary_analysis" and r["version"] == bad]
    assert analysis and not analysis[-1]["passed"], records
    assert analysis[-1]["scores"]["judged"] and analysis[-1]["scores"]["ks"] > 0.2, analysis[-1]
    rolled = [r for r in records if r["event"] == "rolled_back" and r["version"] == bad]
    assert len(rolled) == 1 and "KS" in rolled[0]["reason"] and rolled[0]["automatic"], rolled
    assert rolled[0]["undone"] == ["canary ended"], rolled[0]
    from include.deployment import gateway_route

    active, _ = gateway_route(SESSIONS_MODEL)
    assert active["version"] == v1
    print(f"bad canary: rolled back after {analysis[-1]['seconds']}s, KS {analysis[-1]['scores']['ks']:.3f}; "
          f"{load.ok} requests ok, {load.retried} retried on a closed keep-alive connection")


def test_killing_the_new_champion_in_its_rollback_window_restores_the_previous_one(local_deploy):
    from include.deployment import backend_for, gateway_route

    s = local_deploy
    v1, v2 = _train(0), _train(2)
    dr, states = _deploy({"version": v1})
    assert str(dr.state) == "success", states

    load = Load(s.gateway_url, workers=3)
    load.start()
    killed: dict = {}

    def kill_the_new_champion_once_promoted():
        # dag.test must run in the main thread (signal handlers): the fault comes from this one
        deadline = time.time() + 300
        while time.time() < deadline and _champion() != v2:
            time.sleep(0.2)
        server = gateway_route(SESSIONS_MODEL)[0] or {}
        if _champion() != v2 or server.get("version") != v2:
            killed["error"] = f"v2 was never promoted and routed: champion {_champion()}, edge {server}"
            return
        # kill -9 of the model server itself (its supervisor would restart it: too late for traffic)
        children = Path(f"/proc/{server['id']}/task/{server['id']}/children").read_text().split()
        killed["failed_at_kill"], killed["at"] = load.failed, time.time()
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        time.sleep(1.5)  # one health interval (1 s) and a margin
        killed["failed_after_interval"] = load.failed

    killer = threading.Thread(target=kill_the_new_champion_once_promoted, daemon=True)
    killer.start()
    try:
        dr, states = _deploy({"version": v2, "policy": {"canary": {"weight": 0},
                                                        "rollback_window": {"seconds": 120}}})
        killer.join(timeout=60)
        time.sleep(1.0)
    finally:
        load.stop()
    assert "error" not in killed and "failed_after_interval" in killed, killed
    failed_in_first_interval = killed["failed_after_interval"] - killed["failed_at_kill"]
    failed_before = killed["failed_after_interval"]
    killed_at = killed["at"]
    assert str(dr.state) == "failed" and states["watch_rollback_window"] == "failed", states
    assert _champion() == v1, "the alias did not follow the edge back to the previous champion"
    active, _ = gateway_route(SESSIONS_MODEL)
    assert active["version"] == v1
    assert backend_for(active).alive(active)
    assert load.failed == failed_before, load.errors[-5:]  # nothing failed after the first health interval
    rolled = [r for r in _audit(s) if r["event"] == "rolled_back" and r["version"] == v2]
    assert len(rolled) == 1 and "health checks" in rolled[0]["reason"], rolled
    assert f"champion alias back to v{v1}" in rolled[0]["undone"], rolled[0]
    print(f"kill -9 in the rollback window: rolled back {rolled[0]['time']} "
          f"({time.time() - killed_at:.1f}s after the kill incl. the run's end); {failed_in_first_interval} "
          f"failed in the first 1.5 s, 0 after; {load.ok} ok, {load.retried} retried")
