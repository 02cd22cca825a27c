"""The V2 and MLflow translations (include/serving/protocols.py) around a fake model: no MLflow needed.

The real clients (tritonclient, the kserve SDK, MLflow's own clients) against a real model over
real HTTP are in tests/integration/test_serving_protocols.py.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.spec import load_spec, parse_spec
from tests.unit.test_serving import VALID

V2_TYPES = {"device": "BYTES", "country": "BYTES", "channel": "BYTES", "returning": "INT64", "pages_viewed": "INT64",
            "session_seconds": "FP64", "cart_items": "INT64", "discount_pct": "FP64", "price_viewed": "FP64"}


def _v2(rows: list[dict], **extra) -> dict:
    return {"inputs": [{"name": k, "datatype": V2_TYPES[k], "shape": [len(rows)], "data": [r[k] for r in rows]}
                       for k in rows[0]], **extra}


def _app(spec, tmp_path, loader=None, **kw):
    from include.serving.app import create_app

    def score(model, df, spec):  # echo a feature: each answer can be checked against its request
        return df["pages_viewed"].to_numpy(dtype=float) / 1000.0

    return create_app("m", "3", spec=spec, predictions_dir=tmp_path, model_loader=loader or (lambda n, v: object()),
                      scorer=score, **kw)


@pytest.fixture
def client(tmp_path):
    with TestClient(_app(load_spec("sessions"), tmp_path, max_rows=5)) as c:
        deadline = time.time() + 30
        while c.get("/v2/health/ready").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.02)
        yield c


def test_v2_metadata_types_every_feature_from_the_spec(client):
    meta = client.get("/v2/models/m").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == V2_TYPES
    assert all(i["shape"] == [-1] for i in meta["inputs"])
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    assert meta["versions"] == ["3"] and meta["parameters"]["content_type"] == "pd"
    assert set(meta["parameters"]["optional_inputs"]) == {"price_viewed", "session_id", "ts"}
    assert client.get("/v2/models/m/versions/3").json() == meta
    assert client.get("/v2/models/m/ready").json() == {"name": "m", "ready": True}
    assert client.get("/v2").json()["name"] == "mlops-loop"
    assert client.get("/v2/health/live").json() == {"live": True}


def test_v2_metadata_of_another_spec_types_ints_dates_and_strings():
    from fastapi import FastAPI

    from include.serving.app import ModelServer, ServingConfig
    from include.serving.protocols import add_protocol_routes

    spec = parse_spec({"name": "houses", "key": "house id", "target": "price", "task": "regression",
                       "columns": {"house id": {"dtype": "int"}, "price": {"dtype": "float"},
                                   "listed at": {"dtype": "datetime"}, "street": {"dtype": "string"},
                                   "rooms": {"dtype": "int"}}})
    app = FastAPI()
    add_protocol_routes(app, ModelServer(ServingConfig("houses_model", "1", spec, predictions_dir=".")))
    with TestClient(app) as c:
        meta = c.get("/v2/models/houses_model").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "listed at": "BYTES", "street": "BYTES", "rooms": "INT64"}
    assert meta["parameters"]["optional_inputs"] == ["house id"]


def test_v2_infer_is_predict_with_tensors(client):
    rows = [VALID, {**VALID, "pages_viewed": 7, "price_viewed": 12.5}]
    r = client.post("/v2/models/m/infer", json=_v2(rows, id="abc", parameters={"content_type": "pd"}),
                    headers={"X-Request-ID": "v2-trace"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [2], "data": [0.005, 0.007]}]
    assert body["id"] == "abc" and body["model_version"] == "3" and body["parameters"]["request_id"] == "v2-trace"
    assert r.headers["x-request-id"] == "v2-trace" and r.headers["x-model-version"] == "3"
    assert client.post("/predict", json={"instances": rows}).json()["predictions"] == body["outputs"][0]["data"]
    # [n, 1] tensors, the versioned path, a requested output, NaN for a missing float, key and timestamp
    tensors = _v2(rows)
    for t in tensors["inputs"]:
        t["shape"], t["data"] = [2, 1], [[v] for v in t["data"]]
    tensors["inputs"][-1]["data"] = [[math.nan], [None]]
    tensors["inputs"] += [{"name": "session_id", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
                          {"name": "ts", "datatype": "BYTES", "shape": [2], "data": ["2026-01-01", "2026-01-02"]}]
    # NaN is what DataFrame encoders send for a missing float (not strict JSON: json.dumps, not httpx's)
    r = client.post("/v2/models/m/versions/3/infer", content=json.dumps({**tensors, "outputs": [{"name": "predictions"}]}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0.005, 0.007]
    assert "id" in r.json()


@pytest.mark.parametrize("mutate,status,needle", [
    (lambda b: b["inputs"].pop(0), 422, "missing input(s) ['device']"),
    (lambda b: b["inputs"].append({"name": "purchased", "datatype": "INT64", "shape": [1], "data": [1]}),
     422, "not a column"),
    (lambda b: b["inputs"][3].update(datatype="BOOL", data=[True]), 422, "datatype BOOL"),
    (lambda b: b["inputs"][4].update(datatype="BYTES", data=["five"]), 422, "send INT64"),
    (lambda b: b["inputs"][4].update(data=[501]), 422, "input 'pages_viewed', row 0: Input should be less than"),
    (lambda b: b["inputs"][6].update(data=[2.5]), 422, "input 'cart_items', row 0"),
    (lambda b: b["inputs"][0].update(data=["phone"]), 422, "'mobile', 'desktop' or 'tablet'"),
    (lambda b: b["inputs"][1].update(data=[math.nan]), 422, "input 'country', row 0"),
    (lambda b: b["inputs"][0].update(shape=[2], data=["mobile"]), 400, "1 values for shape [2]"),
    (lambda b: b["inputs"][0].update(shape=[1, 2]), 400, "is not [n]"),
    (lambda b: b["inputs"][0].update(shape=[2], data=["mobile"] * 2), 400, "rows, the inputs before it"),
    (lambda b: b["inputs"].append(dict(b["inputs"][0])), 400, "given twice"),
    (lambda b: [t.update(shape=[0], data=[]) for t in b["inputs"]], 422, "at least 1"),
    (lambda b: [t.update(shape=[6], data=t["data"] * 6) for t in b["inputs"]], 413, "at most 5"),
    (lambda b: b.update(parameters={"content_type": "np"}), 400, "content_type 'np'"),
    (lambda b: b.update(outputs=[{"name": "predict_proba"}]), 400, "unknown output"),
    (lambda b: b.update(instances=[VALID]), 400, "not an inference request"),
    (lambda b: b.update(inputs=[]), 400, "not an inference request"),
    (lambda b: b["inputs"][0].pop("datatype"), 400, "inputs[0].datatype"),
])
def test_v2_bad_requests_get_4xx_in_the_protocol_error_shape(client, mutate, status, needle):
    body = _v2([VALID])
    mutate(body)
    r = client.post("/v2/models/m/infer", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and needle in r.json()["error"], r.json()
    assert r.headers["x-request-id"] and r.headers["x-model-version"] == "3"


def test_v2_wrong_model_version_body_and_binary_tensors(client):
    assert client.post("/v2/models/other/infer", json=_v2([VALID])).status_code == 404
    assert "serves version 3" in client.post("/v2/models/m/versions/2/infer", json=_v2([VALID])).json()["error"]
    assert client.get("/v2/models/m/versions/2/ready").status_code == 404
    binary = client.post("/v2/models/m/infer", content=b"{}", headers={"Inference-Header-Content-Length": "2",
                                                                      "Content-Type": "application/json"})
    assert binary.status_code == 400 and "binary_data=False" in binary.json()["error"]
    bad_json = client.post("/v2/models/m/infer", content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    assert client.post("/v2/models/m/infer", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_mlflow_formats_are_predict(client):
    rows = [VALID, {**VALID, "pages_viewed": 9}]
    want = client.post("/predict", json={"instances": rows}).json()["predictions"]
    cols = list(VALID)
    for body in ({"dataframe_records": rows},
                 {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows], "index": [0, 1]}},
                 {"instances": rows}, {"inputs": rows}, {"inputs": {c: [r[c] for r in rows] for c in cols}},
                 {"dataframe_records": rows, "params": {}}):
        r = client.post("/invocations", json=body)
        assert r.status_code == 200 and r.json() == {"predictions": want}, (body, r.text)
        assert r.headers["x-model-version"] == "3"
    assert client.post("/endpoints/m/invocations", json={"instances": rows}).json() == {"predictions": want}
    assert client.post("/endpoints/x/invocations", json={"instances": rows}).status_code == 404
    ping = client.get("/ping")
    assert ping.status_code == 200


@pytest.mark.parametrize("body,status,needle", [
    ({"dataframe_records": [{**VALID, "device": "phone"}]}, 422, "dataframe_records[0].device"),
    ({"dataframe_records": [VALID], "instances": [VALID]}, 400, "exactly one of"),
    ({"records": [VALID]}, 400, "exactly one of"),
    ([VALID], 400, "JSON object"),
    ({"dataframe_split": {"data": [[1]]}}, 400, '"columns"'),
    ({"dataframe_split": {"columns": ["device"], "data": [["mobile", 1]]}}, 400, "list of 1 values"),
    ({"inputs": {"device": ["mobile"], "country": ["US", "GB"]}}, 400, "all of one length"),
    ({"instances": [[1, 2, 3]]}, 422, "name the columns"),
    ({"instances": "rows"}, 400, "list of rows"),
    ({"instances": [1]}, 422, "instances[0]"),
    ({"instances": [VALID] * 6}, 413, "at most 5"),
])
def test_mlflow_bad_requests_get_4xx_in_mlflow_error_shape(client, body, status, needle):
    r = client.post("/invocations", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error_code", "message"} and needle in r.json()["message"], r.json()


def test_not_ready_is_503_in_each_shape(tmp_path):
    def broken(name, version):
        raise RuntimeError("registry says no")

    with TestClient(_app(load_spec("sessions"), tmp_path, loader=broken)) as c:
        deadline = time.time() + 30
        while c.get("/ready").json()["state"] != "failed":
            assert time.time() < deadline
            time.sleep(0.02)
        assert c.get("/v2/health/ready").status_code == 503 and c.get("/ping").status_code == 503
        assert c.get("/v2/models/m/ready").json() == {"name": "m", "ready": False}
        v2 = c.post("/v2/models/m/infer", json=_v2([VALID]))
        assert v2.status_code == 503 and "registry says no" in v2.json()["error"]
        ml = c.post("/invocations", json={"instances": [VALID]})
        assert ml.status_code == 503 and ml.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


# ------------------------------------------------------------------- V2's one-pass decoding


def _general_way(server, body: bytes):
    """What the V2 handler's general way makes of a body: (columns, rows) or the problem's status."""
    from include.serving.protocols import v2_general
    from include.serving.schema import RequestProblem

    try:
        _id, columns, n = v2_general(server, body)
    except RequestProblem as p:
        return p.status
    return columns, n


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 600), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["mobile", "desktop", "US", "GB", "paid", "social", "2026-01-01T00:00:00Z", "",
                                     "x" * 1001, "phone"]), st.lists(st.integers(0, 3), max_size=2))


@st.composite
def _v2_bodies(draw):
    """A valid request of 1-3 rows, then 0-2 random changes (most of them make it invalid)."""
    n = draw(st.integers(1, 3))
    body = _v2([VALID] * n)
    for _ in range(draw(st.integers(0, 2))):
        inputs = body["inputs"]
        i = draw(st.integers(0, len(inputs) - 1)) if inputs else 0
        change = draw(st.sampled_from(["value", "value", "datatype", "drop", "twice", "unknown", "optional",
                                       "nested", "length", "content_type", "outputs"]))
        if not inputs:
            break
        if change == "value":
            inputs[i]["data"][draw(st.integers(0, n - 1))] = draw(_VALUES)
        elif change == "datatype":
            inputs[i]["datatype"] = draw(st.sampled_from(["INT64", "INT8", "FP32", "FP64", "BYTES", "BOOL"]))
        elif change == "drop":
            inputs.pop(i)
        elif change == "twice":
            inputs.append(dict(inputs[i]))
        elif change in ("unknown", "optional"):
            name = "purchased" if change == "unknown" else draw(st.sampled_from(["session_id", "ts"]))
            inputs.append({"name": name, "datatype": "BYTES", "shape": [n], "data": [draw(_VALUES) for _ in range(n)]})
        elif change == "nested":
            inputs[i] = {**inputs[i], "shape": [n, 1], "data": [[v] for v in inputs[i]["data"]]}
        elif change == "length":
            inputs[i] = {**inputs[i], "shape": [n + 1]}
        elif change == "content_type":
            body["parameters"] = {"content_type": draw(st.sampled_from(["pd", "np", None]))}
        else:
            body["outputs"] = [{"name": draw(st.sampled_from(["predictions", "other"]))}]
    return json.dumps(body).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_v2_bodies())
def test_v2_one_pass_decoding_takes_only_what_the_general_way_accepts_with_the_same_values(body):
    from include.serving.app import ModelServer, ServingConfig
    from include.serving.v2 import V2Columns

    server = _PROPERTY_SERVER.get("server")
    if server is None:
        server = _PROPERTY_SERVER["server"] = ModelServer(ServingConfig("m", "1", load_spec("sessions"),
                                                                        predictions_dir=".", max_rows=2))
        _PROPERTY_SERVER["decoder"] = V2Columns(server)
    decoded = _PROPERTY_SERVER["decoder"].decode(body)
    general = _general_way(server, body)
    if decoded is not None:
        _id, columns, n = decoded
        assert general == (columns, n), (body, general, columns)
        assert all(type(a) is type(b) for col in columns for a, b in zip(columns[col], general[0][col], strict=True))


_PROPERTY_SERVER: dict = {}


def test_v2_one_pass_decoding_takes_a_dataframe_encoder_s_request():
    from include.serving.app import ModelServer, ServingConfig
    from include.serving.v2 import V2Columns

    server = ModelServer(ServingConfig("m", "1", load_spec("sessions"), predictions_dir="."))
    rows = [VALID, {**VALID, "pages_viewed": 7, "price_viewed": 12, "session_seconds": 3}]
    body = _v2(rows, parameters={"content_type": "pd"}, id="x")
    body["inputs"].append({"name": "ts", "datatype": "BYTES", "shape": [2], "data": ["2026-01-01", "2026-01-02"]})
    decoded = V2Columns(server).decode(json.dumps(body).encode())
    assert decoded is not None
    request_id, columns, n = decoded
    assert n == 2 and request_id == "x" and columns == _general_way(server, json.dumps(body).encode())[0]
    assert columns["session_id"] == [None, None] and columns["price_viewed"] == [None, 12.0]
