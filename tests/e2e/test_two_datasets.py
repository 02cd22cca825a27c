"""Two datasets of different task types side by side on one live scheduler, no dataset named by hand.

sessions (classification) and deliveries (regression) land in their own prefixes; the scheduled
ingest, the Asset-triggered train and deploy, and monitor_drift carry the dataset along. Each gets
its own registered model, champion and route; a drift retrain of one leaves the other untouched.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from include import demo_data, demo_data_deliveries
from include.monitoring import policies_overlay
from tests.e2e.live import live_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODELS = {"sessions": "sessions_purchase", "deliveries": "deliveries_eta"}
GENERATORS = {"sessions": demo_data, "deliveries": demo_data_deliveries}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    state = tmp_path_factory.mktemp("live-two-datasets")
    no_cooldown = policies_overlay(state / "policies", cooldown_hours=0)
    with live_stack("embedded", state, extra_env={"MLOPS_POLICIES_DIR": str(no_cooldown)},
                    dag_ids=("ingest", "train", "deploy", "monitor_drift")) as stack:
        yield stack


def _versions(live) -> dict[str, dict]:
    """{dataset: {"champion": v|None, "versions": n}} from the deployment's own MLflow."""
    code = (
        "import json; from include.tracking import alias_version, client, configure_mlflow; configure_mlflow(); "
        f"models = {MODELS!r}; out = {{}}\n"
        "for d, m in models.items():\n"
        "    vs = client().search_model_versions(f\"name='{m}'\")\n"
        "    out[d] = {'champion': alias_version(m, 'champion'), 'versions': len(vs),\n"
        "              'datasets': sorted({v.tags.get('dataset') for v in vs})}\n"
        "print(json.dumps(out))"
    )
    return json.loads(live.python(code))


def _wait_champions(live, want: dict[str, str], timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = _versions(live)
        if all(seen[d]["champion"] == v for d, v in want.items()):
            return seen
        time.sleep(3)
    raise AssertionError(f"champions {want} not reached in {timeout}s: {seen}; train runs "
                         f"{[(r['dag_run_id'], r['state']) for r in live.runs('train')]}; deploy runs "
                         f"{[(r['dag_run_id'], r['state']) for r in live.runs('deploy')]}")


def _predict(live, path: str, rows: list[dict]) -> httpx.Response:
    base = f"http://127.0.0.1:{live.env['MLOPS_SERVING_PORT']}"
    return httpx.post(f"{base}{path}", json={"instances": rows}, timeout=30)


def _serve(live, dataset: str, batch) -> None:
    rows = GENERATORS[dataset].as_requests(batch)
    for i in range(0, len(rows), 50):
        r = _predict(live, f"/models/{MODELS[dataset]}/predict", rows[i:i + 50])
        assert r.status_code == 200, r.text


def test_two_datasets_train_deploy_and_serve_side_by_side(live):
    for dataset, gen in GENERATORS.items():
        gen.write_batch(gen.make_batch(0, 3000), live.state_dir / "landing" / dataset / "day000.csv")
    # the scheduled run may already have taken them (the DAG runs on unpause); a manual run with the
    # form's defaults is the same run: no dataset in the conf either way
    run_id = live.trigger("ingest")
    assert live.wait_run("ingest", run_id, timeout=300)["state"] == "success", live.task_states("ingest", run_id)

    seen = _wait_champions(live, {"sessions": "1", "deliveries": "1"})
    ingests = live.runs("ingest")
    assert all(r["state"] == "success" for r in ingests), ingests
    committed = [k for r in ingests for k, v in live.task_states("ingest", r["dag_run_id"]).items()
                 if k.startswith("commit[") and k != "commit[-1]" and v == "success"]
    assert len(committed) == 2, committed  # one commit per dataset, wherever the run came from
    # each dataset registered into its own model, never the other's
    assert seen["sessions"]["datasets"] == ["sessions"] and seen["deliveries"]["datasets"] == ["deliveries"]
    for run in live.runs("train") + live.runs("deploy"):
        # `champion` moves at promote; the deploy run goes on watching its rollback window
        run = live.wait_run(run["dag_id"], run["dag_run_id"], timeout=300)
        assert run["run_type"] == "asset_triggered" and run["state"] == "success", run

    sessions = _predict(live, "/models/sessions_purchase/predict",
                        demo_data.as_requests(demo_data.make_batch(1, 5)))
    deliveries = _predict(live, "/models/deliveries_eta/predict",
                          demo_data_deliveries.as_requests(demo_data_deliveries.make_batch(1, 5)))
    assert sessions.status_code == deliveries.status_code == 200, (sessions.text, deliveries.text)
    assert all(0 <= p <= 1 for p in sessions.json()["predictions"])  # probabilities
    assert any(p > 1 for p in deliveries.json()["predictions"])  # minutes
    plain = _predict(live, "/predict", demo_data.as_requests(demo_data.make_batch(1, 1)))
    assert plain.status_code == 404 and "/models/<model>/predict" in plain.json()["detail"]


def test_drift_retrains_only_the_dataset_that_drifted(live):
    before = _versions(live)
    _serve(live, "sessions", demo_data.make_batch(5, 1500, seed=3))
    _serve(live, "deliveries", demo_data_deliveries.make_batch(5, 1500, seed=3, covariate_drift=1.0))
    time.sleep(1.5)  # prediction-log flush
    run_id = live.trigger("monitor_drift", {"window_hours": 1})
    monitor = live.wait_run("monitor_drift", run_id, timeout=600)
    assert monitor["state"] == "success", live.task_states("monitor_drift", run_id)
    states = live.task_states("monitor_drift", run_id)
    assert states["check[0]"] == states["check[1]"] == "success", states  # both champions checked

    train = live.wait_run("train", f"drift__{run_id}__deliveries", timeout=600)
    assert train["state"] == "success", live.task_states("train", train["dag_run_id"])
    assert train["conf"]["dataset"] == "deliveries" and train["conf"]["reason"] == "drift"
    assert f"drift__{run_id}__sessions" not in {r["dag_run_id"] for r in live.runs("train")}

    after = _versions(live)
    assert after["deliveries"]["versions"] == before["deliveries"]["versions"] + 1
    assert after["sessions"] == before["sessions"]  # no version, no alias change for the other dataset
