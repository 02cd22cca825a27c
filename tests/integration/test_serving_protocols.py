"""Clients nobody here wrote call a running model server, directly and through the serving edge.

A real registered model (logreg, include.training) in a throw-away MLflow store is served by
uvicorn on a real port, behind the edge. Each client must get /predict's scores for the same rows:

* Triton's ``tritonclient.http`` (one InferInput per feature, JSON tensors) over V2;
* the kserve SDK's ``InferenceRESTClient`` over V2. The SDK pins psutil < 6 and protobuf < 7 (the
  lock has 7.2.2 and 7.36.2, which Airflow and MLflow use), so it cannot join the project lock: it
  runs in its own venv under build/ (made on first use, ~3 min; skipped when the index is unreachable);
* MLflow's scoring-server client (``ScoringServerClient``, what ``mlflow models predict`` uses),
  ``mlflow.deployments.get_deploy_client`` and plain requests in each of MLflow's four formats.

The bad-request corpus of tests/unit/test_serving.py, re-expressed in V2 and MLflow formats, must
get 4xx, never 5xx.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.services import free_port, wait_http
from tests.unit.test_serving import BAD_PAYLOADS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KSERVE = "kserve==0.21.0"
MAX_ROWS = 100  # BAD_PAYLOADS' "too many rows" case sends 101


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real model version served over HTTP; yields its URL, the model and some holdout rows."""
    from include.spec import load_spec

    tmp = tmp_path_factory.mktemp("protocols")
    spec = load_spec("sessions")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
        import uvicorn

        from include.demo_data import make_batch
        from include.serving.app import create_app
        from include.training.train import train_and_register

        df = pd.concat([make_batch(d, 600, seed=7) for d in range(3)], ignore_index=True)
        reg = train_and_register(df, spec, lineage={"data_rev": "test", "dataset": "sessions"},
                                 family="logreg", run_key="test-protocols", reason="test")
        app = create_app(reg["model"], reg["version"], spec=spec, predictions_dir=tmp / "predictions",
                         max_rows=MAX_ROWS, log_flush_seconds=0.2)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", timeout=120)
        holdout = make_batch(10, 40, seed=11)
        holdout.loc[holdout.index[:3], "price_viewed"] = np.nan  # missing values travel too
        yield {"url": url, "model": reg["model"], "version": reg["version"], "spec": spec,
               "rows": holdout[[c.name for c in spec.feature_columns]], "predictions": tmp / "predictions"}
        server.should_exit = True


@pytest.fixture(scope="module")
def edge(served, tmp_path_factory):
    """The serving edge with the served model deployed (the only one: plain paths reach it too)."""
    tmp = tmp_path_factory.mktemp("edge")
    port = free_port()
    upstream = {"model": served["model"], "version": served["version"], "url": served["url"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_STATE_DIR", str(tmp / "state"))
        mp.setenv("MLOPS_SERVING_PORT", str(port))
        mp.setenv("MLOPS_GATEWAY_URL", f"http://127.0.0.1:{port}")
        from include.edge import ensure_edge, stop_edge, switch

        ensure_edge()
        switch(upstream, why="test")
        yield f"http://127.0.0.1:{port}"
        stop_edge()


def _records(rows: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in json.loads(rows.to_json(orient="records"))]


def _predict(url: str, rows: pd.DataFrame) -> list[float]:
    r = httpx.post(url + "/predict", json={"instances": _records(rows)})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


@pytest.fixture(scope="module", params=["direct", "edge"])
def base(request, served):
    return served["url"] if request.param == "direct" else request.getfixturevalue("edge")


# ------------------------------------------------------------------------------------------ V2


def test_tritonclient_gets_the_scores_of_predict(served, base):
    import tritonclient.http as triton

    rows, name = served["rows"], served["model"]
    want = _predict(served["url"], rows)
    client = triton.InferenceServerClient(url=base.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert [i["name"] for i in meta["inputs"]] == list(rows.columns)
        inputs = []
        for i in meta["inputs"]:  # each input typed as the server's metadata says
            values = rows[i["name"]].to_numpy()
            arr = values.astype(np.object_) if i["datatype"] == "BYTES" else values
            tensor = triton.InferInput(i["name"], [len(rows)], i["datatype"])
            tensor.set_data_from_numpy(arr, binary_data=False)  # JSON tensors (no binary extension)
            inputs.append(tensor)
        result = client.infer(name, inputs, request_id="triton-1", headers={"X-Request-ID": "triton-trace"},
                              outputs=[triton.InferRequestedOutput("predictions", binary_data=False)],
                              parameters={"content_type": "pd"})
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("predictions"), want, rtol=0, atol=1e-12)
    assert result.get_response()["id"] == "triton-1"
    assert result.get_response()["model_version"] == served["version"]


def test_v2_requests_share_predict_lineage_headers_and_prediction_log(served, base):
    from include.serving.predlog import read_predictions

    rows = served["rows"].head(2)
    body = {"inputs": [{"name": c, "shape": [2], "datatype": {"int64": "INT64", "float64": "FP64"}.get(
        str(rows[c].dtype), "BYTES"), "data": [v for v in (r[c] for r in _records(rows))]} for c in rows.columns]}
    rid = f"v2-lineage-{base[-5:]}"
    r = httpx.post(f"{base}/v2/models/{served['model']}/infer", json=body, headers={"X-Request-ID": rid})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid and r.headers["x-model-version"] == served["version"]
    assert r.headers["x-model-name"] == served["model"]
    deadline = time.time() + 10
    while time.time() < deadline:
        logged = read_predictions(served["predictions"], served["model"])
        if (logged["request_id"] == rid).sum() == 2:
            break
        time.sleep(0.2)
    mine = logged[logged["request_id"] == rid]
    assert mine["prediction"].tolist() == r.json()["outputs"][0]["data"]
    assert mine["device"].tolist() == rows["device"].tolist()


def _kserve_python() -> Path:
    venv = ROOT / "build" / "kserve-client"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == KSERVE:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", KSERVE], capture_output=True, text=True,
                         timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"could not install {KSERVE} into its own venv: {pip.stderr[-500:]}")
    stamp.write_text(KSERVE)
    return python


def test_kserve_sdk_rest_client_gets_the_scores_of_predict(served, base):
    python = _kserve_python()
    rows = served["rows"]
    job = {"url": base, "model": served["model"], "records": json.loads(rows.to_json(orient="records"))}
    out = subprocess.run([str(python), str(Path(__file__).with_name("kserve_v2_client.py"))], input=json.dumps(job),
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["live"] and got["ready"] and got["model_ready"] and got["id"] == "kserve-sdk"
    np.testing.assert_allclose(got["predictions"], _predict(served["url"], rows), rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------- MLflow


def test_mlflow_clients_and_formats_get_the_scores_of_predict(served, base):
    from mlflow.deployments import get_deploy_client
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    rows = served["rows"]
    want = _predict(served["url"], rows)
    host, port = base.removeprefix("http://").split(":")
    scoring = ScoringServerClient(host, int(port))
    scoring.wait_server_ready(timeout=10)  # GET /ping
    np.testing.assert_allclose(scoring.invoke(rows).get_predictions(predictions_format="ndarray"), want,
                               rtol=0, atol=1e-12)  # a DataFrame goes as dataframe_split
    records = _records(rows)
    cols = list(rows.columns)
    bodies = {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in records]},
              "dataframe_records": records, "instances": records,
              "inputs": {c: [r[c] for r in records] for c in cols}}
    for fmt, data in bodies.items():
        r = httpx.post(base + "/invocations", json={fmt: data})
        assert r.status_code == 200, (fmt, r.text)
        np.testing.assert_allclose(r.json()["predictions"], want, rtol=0, atol=1e-12, err_msg=fmt)
    if base != served["url"]:  # the deployments client posts to the edge's /endpoints/<name>/invocations
        got = get_deploy_client(base).predict(endpoint=served["model"], inputs={"dataframe_records": records})
        np.testing.assert_allclose(got["predictions"], want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- bad requests


def _as_v2(payload) -> object:
    """A /predict payload as V2 tensors: one per field, typed by its values (as a careless client would)."""
    rows = payload.get("instances") if isinstance(payload, dict) and len(payload) == 1 else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return payload  # not rows at all: sent as it is, it is no inference request either
    names = list(dict.fromkeys(k for r in rows for k in r))

    def datatype(values):
        kinds = {type(v) for v in values if v is not None}
        return "BOOL" if kinds == {bool} else "INT64" if kinds == {int} else \
            "FP64" if kinds <= {int, float} and kinds else "BYTES"

    return {"inputs": [{"name": n, "shape": [len(rows)], "datatype": datatype([r.get(n) for r in rows]),
                        "data": [r.get(n) for r in rows]} for n in names]}


def _as_mlflow(payload) -> list:
    rows = payload.get("instances") if isinstance(payload, dict) and len(payload) == 1 else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        rows_of_a_list = isinstance(payload, list) and all(isinstance(r, dict) for r in payload)
        return [payload] + ([] if rows_of_a_list else [{"dataframe_records": payload}])
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [{"dataframe_records": rows}, {"instances": rows},
            {"dataframe_split": {"columns": cols, "data": [[r.get(c) for c in cols] for r in rows]}}]


@pytest.mark.parametrize("case,payload,status,needle", BAD_PAYLOADS, ids=[c[0] for c in BAD_PAYLOADS])
def test_the_bad_request_corpus_gets_4xx_in_v2_and_mlflow_formats(served, case, payload, status, needle):
    url, name = served["url"], served["model"]
    v2 = httpx.post(f"{url}/v2/models/{name}/infer", json=_as_v2(payload))
    assert 400 <= v2.status_code < 500 and isinstance(v2.json()["error"], str), (case, v2.text)
    for body in _as_mlflow(payload):
        r = httpx.post(f"{url}/invocations", json=body)
        assert 400 <= r.status_code < 500 and r.json()["message"], (case, body, r.text)
        assert r.json()["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE", "RESOURCE_EXHAUSTED")


def test_no_5xx_was_answered(served):
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(served["url"] + "/metrics").text
    five = [(s.labels["endpoint"], s.labels["status"]) for f in text_string_to_metric_families(text)
            if f.name == "mlops_serving_requests" for s in f.samples
            if s.name.endswith("_total") and s.labels["status"].startswith("5")
            and s.labels["endpoint"] not in ("/ready", "/v2/health/ready", "/ping")]  # 503 while loading
    assert five == []
    infer = [s.value for f in text_string_to_metric_families(text) if f.name == "mlops_serving_requests"
             for s in f.samples if s.labels.get("endpoint") == f"/v2/models/{served['model']}/infer"]
    assert sum(infer) > len(BAD_PAYLOADS)  # the V2 path is labelled, not "other"
