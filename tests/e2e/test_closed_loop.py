"""The closed loop, every stage a real DAG run (dag.test) on real components:

ingest batch 1 -> train -> gate -> deploy -> serve drifted traffic -> monitor_drift fires ->
train on the new data -> gate passes -> deploy -> the new champion serves.

Deployment uses the Docker engine when one answers (MLOPS_DEPLOY_BACKEND=auto), else local processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from include.demo import serve_batch
from include.demo_data import make_batch, write_batch
from tests.dagrun import run_dag, task_states
from tests.services import SESSIONS_MODEL, serving_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


COOLDOWN_S = 45


@pytest.fixture
def loop_env(airflow_db, state, monkeypatch, tmp_path):
    from include.monitoring import policies_overlay

    # the shipped policies, with a cooldown short enough for a test yet longer than one DAG run
    # and drift retrains fit on the newest day only (the drifted batch)
    policies = policies_overlay(tmp_path / "policies", cooldown_hours=COOLDOWN_S / 3600, retrain_window_days=1)
    monkeypatch.setenv("MLOPS_POLICIES_DIR", str(policies))
    from include.deployment import stop_all

    yield serving_env(monkeypatch, state, os.environ.get("MLOPS_DEPLOY_BACKEND", "auto"))
    stop_all()


def _run(dag_id: str, conf: dict | None = None):
    dr = run_dag(dag_id, conf or {})
    return dr, task_states(dr)


def _version_with_alias(alias: str) -> str | None:
    from include.tracking import alias_version, configure_mlflow

    configure_mlflow()
    return alias_version(SESSIONS_MODEL, alias)  # None: no such alias (yet)


def _candidate_version() -> str:
    from include.tracking import client

    versions = client().search_model_versions(f"name='{SESSIONS_MODEL}'")
    return str(max(int(v.version) for v in versions))


def _serve(gateway: str, batch) -> set[str]:
    """Send a batch's sessions (with their keys, without labels) through the gateway."""
    return set(serve_batch(gateway, batch))


def test_drift_closes_the_loop(loop_env):
    s = loop_env
    landing = Path(s.landing) / "sessions"

    # 1. first data -> first model -> first deployment
    write_batch(make_batch(0, 3000, seed=7), landing / "day000.csv")
    dr, states = _run("ingest")
    assert str(dr.state) == "success", states
    dr, states = _run("train", {"dataset": "sessions", "reason": "initial", "family": "logreg"})
    assert str(dr.state) == "success" and states["gate[0]"] == "success", states
    v1 = _candidate_version()
    dr, states = _run("deploy", {"model": SESSIONS_MODEL, "version": v1})
    assert str(dr.state) == "success", states
    assert _version_with_alias("champion") == v1

    # 2. no drift yet: traffic like the training data does not trigger anything
    assert _serve(s.gateway_url, make_batch(1, 800, seed=7)) == {v1}
    time.sleep(1.5)  # prediction-log flush
    dr, states = _run("monitor_drift", {"window_hours": 1})
    assert str(dr.state) == "success", states
    assert states["trigger_train[-1]"] == "skipped", states

    # 3. the world changes: drifted sessions are served, their labels arrive in the next batch
    from include.tracking import client

    created = client().get_model_version(SESSIONS_MODEL, v1).creation_timestamp / 1000
    time.sleep(max(0.0, created + COOLDOWN_S + 1 - time.time()))  # out of v1's own cooldown
    # (a big batch: the retrained model must learn the new world, not mostly the old one)
    drifted = make_batch(2, 8000, seed=7, covariate_drift=1.0, concept_drift=1.0)
    assert _serve(s.gateway_url, drifted.head(2000)) == {v1}
    write_batch(drifted, landing / "day002.csv")
    dr, states = _run("ingest")
    assert str(dr.state) == "success", states
    time.sleep(1.5)

    dr, states = _run("monitor_drift", {"window_hours": 1})
    assert str(dr.state) == "success" and states["trigger_train[0]"] == "success", states
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        triggered = session.query(DagRun).filter(DagRun.dag_id == "train",
                                                 DagRun.run_id == f"drift__{dr.run_id}__sessions").one()
        conf = dict(triggered.conf)
    assert conf["reason"] == "drift" and conf["drifted_features"] and conf["report_uri"]
    assert {"device", "channel"} & set(conf["drifted_features"])

    # a second check inside the cooldown does not trigger again
    dr2, states2 = _run("monitor_drift", {"window_hours": 1})
    assert states2["trigger_train[-1]"] == "skipped", states2

    # 4. the triggered retrain (run here in-process with the conf monitor_drift sent)
    dr, states = _run("train", {**conf, "family": "logreg"})
    assert str(dr.state) == "success", states
    v2 = _candidate_version()
    assert v2 != v1
    assert states["gate[0]"] == "success", "the gate rejected a model trained on the new world"
    assert _version_with_alias("challenger") == v2
    tags = client().get_model_version(SESSIONS_MODEL, v2).tags
    assert tags["reason"] == "drift" and tags["trigger_report_uri"] == conf["report_uri"]
    assert conf["window_days"] == 1 and tags["selection_window_days"] in ("1", "1.0")
    params = client().get_run(client().get_model_version(SESSIONS_MODEL, v2).run_id).data.params
    assert sum(int(params[k]) for k in ("n_train", "n_val", "n_test")) == 8000  # the drifted day only

    # 5. deploy -> the new champion serves
    dr, states = _run("deploy", {"model": SESSIONS_MODEL, "version": v2})
    assert str(dr.state) == "success", states
    assert _version_with_alias("champion") == v2
    assert _serve(s.gateway_url, make_batch(3, 100, seed=7, covariate_drift=1.0)) == {v2}
