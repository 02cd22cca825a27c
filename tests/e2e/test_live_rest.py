"""The loop on a live scheduler, driven only through the REST API (and the `retrain` CLI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _model_version_tags(live, version: str) -> dict:
    code = ("import json,sys; from include.tracking import client, configure_mlflow; configure_mlflow(); "
            "from include.config import settings; "
            f"print(json.dumps(client().get_model_version('sessions_purchase', '{version}').tags))")
    out = subprocess.run([sys.executable, "-c", code], env=live.env, capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_landing_a_batch_runs_ingest_then_train_by_asset(live_airflow):
    live = live_airflow
    landing = live.state_dir / "landing" / "sessions"
    write_batch(make_batch(0, 3000), landing / "day000.csv")
    run_id = live.trigger("ingest")
    ingest = live.wait_run("ingest", run_id, timeout=300)
    assert ingest["state"] == "success", live.task_states("ingest", run_id)
    # train is scheduled on the dataset Asset that ingest emitted: no trigger from us
    train = live.wait_run("train", after=0, timeout=300)
    assert train["state"] == "success", live.task_states("train", train["dag_run_id"])
    assert train["run_type"] == "asset_triggered"
    # ... and deploy on the model_candidate Asset that train's gate emitted
    deploy = live.wait_run("deploy", after=0, timeout=300)
    assert deploy["state"] == "success", live.task_states("deploy", deploy["dag_run_id"])
    assert deploy["run_type"] == "asset_triggered"
    served = _serve(live, make_batch(1, 100))
    assert served == {"1"}


def _serve(live, batch) -> set[str]:
    from include.demo import serve_batch

    return set(serve_batch(f"http://127.0.0.1:{live.env['MLOPS_SERVING_PORT']}", batch))


def test_drifted_traffic_triggers_retraining(live_airflow):
    live = live_airflow
    _serve(live, make_batch(5, 1500, covariate_drift=1.0))
    time.sleep(1.5)  # prediction-log flush
    run_id = live.trigger("monitor_drift", {"window_hours": 1})
    monitor = live.wait_run("monitor_drift", run_id, timeout=300)
    assert monitor["state"] == "success", live.task_states("monitor_drift", run_id)
    states = live.task_states("monitor_drift", run_id)
    assert states["trigger_train[0]"] == "success", states
    train = live.wait_run("train", f"drift__{run_id}__sessions", timeout=300)
    assert train["state"] == "success", live.task_states("train", train["dag_run_id"])
    assert train["conf"]["reason"] == "drift" and train["conf"]["drifted_features"]


def test_retrain_cli_reason_reaches_lineage_tags(live_airflow):
    live = live_airflow
    before = len(live.runs("train"))
    proc = subprocess.run(
        # --force: the data and config are those of the version trained above, a deliberate retrain
        [str(Path(sys.executable).parent / "retrain"), "--dataset", "sessions", "--reason", "cli-e2e: promo season",
         "--force", "--wait", "--timeout", "600"],
        env={**live.env, "MLOPS_AIRFLOW_API_URL": live.url}, capture_output=True, text=True, timeout=700,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "UI: " in proc.stdout and "success" in proc.stdout
    runs = live.runs("train")
    assert len(runs) == before + 1
    # the newest registered version carries the reason
    code = ("from include.tracking import client, configure_mlflow; configure_mlflow(); "
            "from include.config import settings; "
            "print(max(int(v.version) for v in client().search_model_versions(\"name='sessions_purchase'\")))")
    newest = subprocess.run([sys.executable, "-c", code], env=live.env, capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    tags = _model_version_tags(live, newest)
    assert tags["reason"] == "cli-e2e: promo season"
    assert tags["data_rev"] and tags["dag_run_id"] == runs[-1]["dag_run_id"]


def test_retrain_cli_bad_credentials_is_a_clear_error(live_airflow):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "retrain"), "--reason", "x"],
        env={**live_airflow.env, "MLOPS_AIRFLOW_API_URL": live_airflow.url, "AIRFLOW_PASSWORD": "wrong"},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "login" in proc.stderr and "failed" in proc.stderr


def test_secrets_never_reach_task_logs(live_airflow):
    """After the runs above, no task log holds a secret value of this deployment."""
    env = live_airflow.env
    secrets = [v for k, v in env.items() if k in ("MLOPS_ADMIN_TOKEN", "AIRFLOW__API_AUTH__JWT_SECRET") and v]
    secrets.append(live_airflow.password)
    logs = list((Path(env["AIRFLOW_HOME"]) / "logs").rglob("*.log"))
    assert logs, "no task logs found"
    leaks = [(str(p), s[:4] + "...") for p in logs for s in secrets if s in p.read_text(errors="replace")]
    assert not leaks, leaks
