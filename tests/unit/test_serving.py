"""The model server (include/serving/: app, schema, batcher, routes) and its prediction log (include/serving/predlog.py).

Most tests run the app in-process (FastAPI TestClient, lifespan included) around a real model:
a small pipeline trained and registered with include.training into a throw-away MLflow store
(module scope, like the ``state`` fixture but shared, because training takes ~10 s). The batching,
readiness and schema tests inject a fake loader/scorer instead and need no MLflow; only the tests
around the real model are marked slow.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from include.serving.predlog import PredictionLog, list_files, prediction_schema, read_predictions
from include.spec import load_spec, parse_spec

TOKEN = "s3cret-admin-token"


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spec():
    return load_spec("sessions")


@contextmanager
def mlflow_store(tmp):
    """A throw-away MLflow store (SQLite + local artifacts) in ``tmp`` for a module-scoped fixture."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield


@pytest.fixture(scope="module")
def registry(tmp_path_factory, spec):
    """A real registered model (logreg, include.training) + a second version of the same artifact."""
    tmp = tmp_path_factory.mktemp("serving-registry")
    with mlflow_store(tmp):
        from include.demo_data import make_batch
        from include.tracking import client
        from include.training.model_io import load_model
        from include.training.train import train_and_register

        df = pd.concat([make_batch(d, 600, seed=7) for d in range(3)], ignore_index=True)
        reg = train_and_register(df, spec, lineage={"data_rev": "test", "dataset": "sessions"},
                                 family="logreg", run_key="test-serving-logreg", reason="test")
        mv = client().get_model_version(reg["model"], reg["version"])
        v2 = client().create_model_version(reg["model"], mv.source, run_id=mv.run_id)
        yield {"name": reg["model"], "version": reg["version"], "version2": str(v2.version),
               "model": load_model(reg["model"], reg["version"]), "tmp": tmp}


def wait_ready(client: TestClient, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get("/ready")
        if r.status_code == 200:
            return r.json()
        if r.json().get("state") == "failed":
            raise AssertionError(f"model failed to load: {r.json()}")
        time.sleep(0.05)
    raise TimeoutError("app not ready")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("predictions")


@pytest.fixture(scope="module")
def client(registry, spec, app_dir):
    from include.serving.app import create_app

    app = create_app(registry["name"], registry["version"], spec=spec, predictions_dir=app_dir,
                     admin_token=TOKEN, max_rows=100, log_flush_seconds=0.2)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def rows_of(df: pd.DataFrame, spec, with_key: bool = False) -> list[dict]:
    """JSON-ready rows: native Python values, NaN -> null (no float rounding on the way)."""
    cols = [c.name for c in spec.feature_columns] + ([spec.key] if with_key else [])
    out = []
    for rec in df[cols].to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    return out


@pytest.fixture(scope="module")
def holdout():
    from include.demo_data import make_batch

    return make_batch(10, 60, seed=11)


VALID = {"device": "mobile", "country": "US", "channel": "paid", "returning": 1, "pages_viewed": 5,
         "session_seconds": 100.5, "cart_items": 2, "discount_pct": 5.0, "price_viewed": None}


# ----------------------------------------------------------------------------------- predictions


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_single_and_batch_predictions_equal_offline_and_name_the_version(client, registry, spec, holdout):
    from include.training.metrics import predict_scores

    offline = predict_scores(registry["model"], holdout, spec)
    assert np.isnan(holdout["price_viewed"]).sum() >= 0  # nulls (if any) travel as JSON null

    r = client.post("/predict", json={"instances": rows_of(holdout, spec)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == registry["name"] and body["model_version"] == registry["version"]
    assert body["request_id"] and r.headers["x-request-id"] == body["request_id"]
    assert r.headers["x-model-version"] == registry["version"]
    np.testing.assert_allclose(body["predictions"], offline, rtol=0, atol=1e-12)

    one = client.post("/predict", json={"instance": rows_of(holdout.head(1), spec)[0]})
    assert one.status_code == 200, one.text
    assert one.json()["prediction"] == pytest.approx(offline[0], abs=1e-12)
    assert one.json()["predictions"] == [one.json()["prediction"]]


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_nulls_and_key_column_are_accepted(client):
    r = client.post("/predict", json={"instances": [{**VALID, "session_id": "abc-1"},
                                                    {k: v for k, v in VALID.items() if k != "price_viewed"}]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_client_request_id_is_kept(client):
    r = client.post("/predict", json={"instance": VALID}, headers={"X-Request-ID": "trace-42"})
    assert r.json()["request_id"] == "trace-42" == r.headers["x-request-id"]
    bad = client.post("/predict", json={"instance": VALID}, headers={"X-Request-ID": "no spaces <allowed>"})
    assert bad.json()["request_id"] != "no spaces <allowed>"


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_the_spec_timestamp_is_accepted_and_not_scored(client):
    # clients send whole dataset rows; the timestamp is in the spec, so it is no "unknown field"
    plain = client.post("/predict", json={"instance": VALID}).json()["predictions"]
    for ts in ("2026-01-01T10:00:00Z", "2030-12-31"):
        r = client.post("/predict", json={"instance": {**VALID, "ts": ts}})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == plain


BAD_PAYLOADS = [
    ("missing field", {"instances": [{k: v for k, v in VALID.items() if k != "device"}]}, 422, "device"),
    ("wrong type", {"instances": [{**VALID, "pages_viewed": "five"}]}, 422, "pages_viewed"),
    ("float for int", {"instances": [{**VALID, "cart_items": 2.5}]}, 422, "cart_items"),
    ("bool for int", {"instances": [{**VALID, "returning": True}]}, 422, "returning"),
    ("out of range", {"instances": [{**VALID, "pages_viewed": 501}]}, 422, "less than or equal to 500"),
    ("negative", {"instances": [{**VALID, "session_seconds": -1.0}]}, 422, "greater than or equal to 0"),
    ("unknown category", {"instances": [{**VALID, "device": "phone"}]}, 422, "'mobile', 'desktop' or 'tablet'"),
    ("null not allowed", {"instances": [{**VALID, "country": None}]}, 422, "country"),
    ("extra field", {"instances": [{**VALID, "purchased": 1}]}, 422, "unknown field"),
    ("timestamp not a date", {"instances": [{**VALID, "ts": "yesterday"}]}, 422, "ts"),
    ("empty list", {"instances": []}, 422, "at least 1"),
    ("both keys", {"instances": [VALID], "instance": VALID}, 422, "exactly one"),
    ("neither key", {"rows": [VALID]}, 422, '{"instances": [row, ...]}'),
    ("not an object", [VALID], 422, "object"),
    ("row not an object", {"instances": [1, 2]}, 422, "instances[0]"),
    ("too many rows", {"instances": [VALID] * 101}, 413, "at most 100"),
]


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
@pytest.mark.parametrize("case,payload,status,needle", BAD_PAYLOADS, ids=[c[0] for c in BAD_PAYLOADS])
def test_bad_payloads_get_4xx_with_a_message(client, registry, case, payload, status, needle):
    r = client.post("/predict", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert needle in body["error"]["message"], body
    assert body["request_id"] and body["model_version"] == registry["version"]
    assert r.headers["x-model-version"] == registry["version"]


@pytest.mark.parametrize("content,ctype,status,needle", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"", "application/json", 400, "empty body"),
    (b"\xff\xfe garbage", "application/json", 400, "not valid JSON"),
    (json.dumps({"instance": VALID}).replace('"discount_pct": 5.0', '"discount_pct": NaN').encode(),
     "application/json", 422, "discount_pct: Input should be a finite number"),
    (json.dumps({"instance": VALID}).encode(), "text/plain", 415, "application/json"),
    (b"instance=1", "application/x-www-form-urlencoded", 415, "application/json"),
    (json.dumps({"instance": VALID}).encode(), "", 415, "application/json"),
])
@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_malformed_bodies_and_content_types(client, content, ctype, status, needle):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/predict", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_unknown_route_and_method_are_json_4xx(client, registry):
    r = client.get("/predict")
    assert r.status_code == 405 and r.json()["model_version"] == registry["version"]
    assert client.get("/nope").status_code == 404


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_schema_endpoint_describes_the_spec(client, spec):
    schema = client.get("/schema").json()
    row = next(iter(schema["$defs"].values()))
    # features, plus the optional key and timestamp (accepted, not scored)
    assert set(row["properties"]) == {c.name for c in spec.feature_columns} | {spec.key, spec.timestamp}
    assert set(row["required"]) <= {c.name for c in spec.feature_columns}
    assert row["additionalProperties"] is False
    assert row["properties"]["pages_viewed"]["maximum"] == 500


# -------------------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
feature_names = st.sampled_from([*VALID, "session_id", "ts", "purchased", "bogus"])
near_valid_row = st.dictionaries(feature_names, json_values, max_size=12).map(lambda d: {**VALID, **d}) | \
    st.dictionaries(feature_names, json_values, max_size=12)
payloads = (
    json_values
    | st.fixed_dictionaries({"instances": st.lists(near_valid_row, max_size=5)})
    | st.fixed_dictionaries({"instance": near_valid_row})
    | st.fixed_dictionaries({"instance": json_values, "instances": json_values})
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
@given(payload=payloads)
def test_fuzzed_json_is_answered_200_or_4xx(client, payload):
    r = client.post("/predict", content=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (payload, r.text)
    body = r.json()
    assert body["request_id"] and body["model_version"]
    if r.status_code != 200:
        assert body["error"]["message"]


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_are_answered_4xx(client, raw):
    r = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 or r.status_code == 200, r.text


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_app_is_healthy_after_the_fuzzing(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").status_code == 200
    assert client.post("/predict", json={"instance": VALID}).status_code == 200
    text = client.get("/metrics").text
    five_xx = [s for f in text_string_to_metric_families(text) if f.name == "mlops_serving_requests"
               for s in f.samples if s.name.endswith("_total") and s.labels["endpoint"] == "/predict"
               and s.labels["status"].startswith("5")]
    assert five_xx == [], five_xx


# -------------------------------------------------------------------------------------- metrics


def _samples(client) -> dict:
    out = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_metrics_parse_and_count(client, registry):
    before = _samples(client)
    ok_key = ("mlops_serving_requests_total", (("endpoint", "/predict"), ("method", "POST"), ("status", "200")))
    bad_key = ("mlops_serving_requests_total", (("endpoint", "/predict"), ("method", "POST"), ("status", "422")))
    rows_key = ("mlops_serving_rows_predicted_total", (("model_version", registry["version"]),))
    for _ in range(3):
        assert client.post("/predict", json={"instances": [VALID, VALID]}).status_code == 200
    assert client.post("/predict", json={"instances": [{**VALID, "device": "x"}]}).status_code == 422
    after = _samples(client)
    assert after[ok_key] - before.get(ok_key, 0) == 3
    assert after[bad_key] - before.get(bad_key, 0) == 1
    assert after[rows_key] - before.get(rows_key, 0) == 6
    assert after[("mlops_serving_model_info", (("model_name", registry["name"]),
                                               ("model_version", registry["version"])))] == 1
    assert after[("mlops_serving_ready", ())] == 1
    lat = ("mlops_serving_request_duration_seconds_count", (("endpoint", "/predict"),))
    assert after[lat] - before.get(lat, 0) == 4
    assert after[("mlops_serving_errors_total", (("type", "validation_error"),))] >= 1


# ------------------------------------------------------------------------------- prediction log


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_predictions_are_logged_and_read_back(client, registry, spec, holdout, app_dir):
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    rows = rows_of(holdout.head(7), spec, with_key=True)
    r = client.post("/predict", json={"instances": rows}, headers={"X-Request-ID": "log-test-1"})
    assert r.status_code == 200
    client.app.state.server.predlog.flush()

    df = read_predictions(app_dir, registry["name"], since=t0)
    mine = df[df["request_id"] == "log-test-1"].reset_index(drop=True)
    assert len(mine) == 7
    assert list(df.columns[:5]) == ["request_id", "ts", "model_version", "prediction", spec.key]
    assert set(c.name for c in spec.feature_columns) <= set(df.columns)
    assert (mine["model_version"] == registry["version"]).all()
    np.testing.assert_allclose(mine["prediction"], r.json()["predictions"], rtol=0, atol=0)
    assert list(mine[spec.key]) == list(holdout[spec.key].head(7))
    assert list(mine["pages_viewed"]) == list(holdout["pages_viewed"].head(7))
    assert str(mine["ts"].dtype) == "datetime64[us, UTC]"
    assert mine["ts"].min() >= pd.Timestamp(t0)

    narrow = read_predictions(app_dir, registry["name"], since=t0, columns=["request_id", "prediction"],
                              model_version=registry["version"])
    assert list(narrow.columns) == ["request_id", "prediction"] and len(narrow) >= 7
    assert read_predictions(app_dir, registry["name"], model_version="999").empty
    assert read_predictions(app_dir, registry["name"], until=t0 - timedelta(days=1)).empty
    files = list_files(app_dir, registry["name"])
    assert files and all(f.parent.name.startswith("date=") and f.name.startswith("part-") for f in files)


def test_prediction_log_flushes_by_rows_by_time_and_at_close(tmp_path, spec):
    log = PredictionLog(tmp_path, "m", spec, flush_rows=5, flush_seconds=0.3).start()
    now = datetime.now(UTC)
    feats = {"device": ["mobile"] * 5, "pages_viewed": [3] * 5}
    log.append("r1", now, "1", [0.1] * 5, feats)  # reaches flush_rows: the writer thread wakes up
    _wait_for(lambda: log.rows_written == 5)
    log.append("r2", now, "1", [0.2], {"device": ["desktop"], "pages_viewed": [4]})
    _wait_for(lambda: log.rows_written == 6)  # flush_seconds
    log.append("r3", now, "2", [0.3, 0.4], {})  # missing features are logged as nulls
    log.close()
    assert log.rows_written == 8 and log.write_errors == 0
    df = read_predictions(tmp_path, "m")
    assert list(df["request_id"]) == ["r1"] * 5 + ["r2"] + ["r3"] * 2
    assert df["device"].tolist()[-3:] == ["desktop", None, None]
    assert df["model_version"].tolist()[-1] == "2"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temp files left behind"


def test_prediction_log_partitions_by_day_and_reads_windows(tmp_path, spec):
    log = PredictionLog(tmp_path, "m", spec, flush_rows=10_000, flush_seconds=60)
    d1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    d2 = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
    log.append("a", d1, "1", [0.5], {"cart_items": [1]})
    log.append("b", d2, "1", [0.6], {"cart_items": [2]})
    paths = log.flush()
    assert sorted(p.parent.name for p in paths) == ["date=2026-03-01", "date=2026-03-02"]
    assert read_predictions(tmp_path, "m", since="2026-03-02")["request_id"].tolist() == ["b"]
    assert read_predictions(tmp_path, "m", until=d2)["request_id"].tolist() == ["a"]
    assert read_predictions(tmp_path, "m", since=d1, until=d2 + timedelta(seconds=1),
                            columns=["cart_items"])["cart_items"].tolist() == [1, 2]
    assert len(list_files(tmp_path, "m", since="2026-03-02")) == 1  # only the needed day is opened
    assert read_predictions(tmp_path, "unknown-model").empty
    with pytest.raises(KeyError, match="nope"):
        read_predictions(tmp_path, "m", columns=["nope"])


def test_prediction_log_reads_files_of_an_older_spec(tmp_path, spec):
    raw = {"name": "s", "key": "id", "target": "y", "task": "regression",
           "columns": {"id": {"dtype": "string"}, "y": {"dtype": "float"}, "a": {"dtype": "int"}}}
    old = PredictionLog(tmp_path, "m", parse_spec(raw))
    old.append("old", datetime(2026, 1, 1, tzinfo=UTC), "1", [1.0], {"a": [7]})
    old.flush()
    raw["columns"]["b"] = {"dtype": "category", "values": ["x"]}
    new = PredictionLog(tmp_path, "m", parse_spec(raw))
    new.append("new", datetime(2026, 1, 1, 1, tzinfo=UTC), "2", [2.0], {"a": [8], "b": ["x"]})
    new.flush()
    df = read_predictions(tmp_path, "m")
    assert df["request_id"].tolist() == ["old", "new"] and df["b"].tolist() == [None, "x"]


def test_prediction_log_keeps_rows_when_a_write_fails(tmp_path, spec, monkeypatch):
    log = PredictionLog(tmp_path, "m", spec)
    log.append("r", datetime.now(UTC), "1", [0.5], {})
    monkeypatch.setattr(log, "_write_file", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    assert log.flush() == [] and log.write_errors == 1 and log.buffered_rows == 1
    monkeypatch.undo()
    assert len(log.flush()) == 1 and log.rows_written == 1


def test_prediction_schema_follows_the_spec(spec):
    schema = prediction_schema(spec)
    assert schema.names[:5] == ["request_id", "ts", "model_version", "prediction", "session_id"]
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("pages_viewed").type) == "int64"
    assert str(schema.field("device").type) == "string"


def _wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError("condition not met")


# --------------------------------------------------------------------------------- admin reload


@pytest.mark.slow  # trains and registers a real model (module fixture, ~10 s once)
def test_admin_reload_requires_the_token_and_swaps(client, registry):
    v1, v2 = registry["version"], registry["version2"]
    assert client.post("/admin/reload", json={"version": v2}).status_code == 401
    assert client.post("/admin/reload", json={"version": v2},
                       headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/admin/reload", json={"version": "champion"}, headers=auth).status_code == 422
    missing = client.post("/admin/reload", json={"version": "999"}, headers=auth)
    assert missing.status_code == 404 and f"still serving version {v1}" in missing.json()["error"]["message"]
    assert client.post("/predict", json={"instance": VALID}).json()["model_version"] == v1

    r = client.post("/admin/reload", json={"version": v2}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["previous_version"] == v1 and r.json()["model_version"] == v2 and r.json()["changed"]
    p = client.post("/predict", json={"instance": VALID})
    assert p.json()["model_version"] == v2 == p.headers["x-model-version"]
    assert client.get("/ready").json()["model_version"] == v2
    again = client.post("/admin/reload", json={"version": v2}, headers=auth)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert client.post("/admin/reload", json={"version": v1}, headers=auth).status_code == 200
    info = _samples(client)
    assert info[("mlops_serving_model_info", (("model_name", registry["name"]), ("model_version", v1)))] == 1
    assert ("mlops_serving_model_info", (("model_name", registry["name"]), ("model_version", v2))) not in info


def test_admin_api_is_disabled_without_a_token(spec, tmp_path):
    app = _fake_app(spec, tmp_path)
    with TestClient(app) as c:
        r = c.post("/admin/reload", json={"version": "2"}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


# ------------------------------------------------- readiness, batching, schema (fake model, no MLflow)


def _fake_app(spec, tmp_path, *, loader=None, scorer=None, **kw):
    from include.serving.app import create_app

    def score(model, df, spec):  # echo a feature so each response can be checked against its request
        return df["pages_viewed"].to_numpy(dtype=float) / 1000.0

    return create_app("fake", "1", spec=spec, predictions_dir=tmp_path, model_loader=loader or (lambda n, v: object()),
                      scorer=scorer or score, **kw)


def test_readiness_reports_a_failed_load(spec, tmp_path):
    def broken(name, version):
        raise RuntimeError("registry says no")

    with TestClient(_fake_app(spec, tmp_path, loader=broken)) as c:
        _wait_for(lambda: c.get("/ready").json()["state"] == "failed")
        r = c.get("/ready")
        assert r.status_code == 503 and "registry says no" in r.json()["error"]
        assert c.get("/health").status_code == 200  # alive, not ready
        p = c.post("/predict", json={"instance": VALID})
        assert p.status_code == 503 and p.json()["error"]["type"] == "not_ready"


def test_golden_sample_must_score(spec, tmp_path):
    with TestClient(_fake_app(spec, tmp_path, scorer=lambda m, df, s: np.full(len(df), np.nan))) as c:
        _wait_for(lambda: c.get("/ready").json()["state"] == "failed")
        assert "golden" in c.get("/ready").json()["error"]


def test_limits_body_size_and_rows(spec, tmp_path):
    with TestClient(_fake_app(spec, tmp_path, max_rows=3, max_body_bytes=2000)) as c:
        wait_ready(c)
        assert c.post("/predict", json={"instances": [VALID] * 3}).status_code == 200
        assert c.post("/predict", json={"instances": [VALID] * 4}).status_code == 413
        big = c.post("/predict", json={"instances": [{**VALID, "bogus": "x" * 3000}]})
        assert big.status_code == 413 and "exceeds" in big.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 300

        r = c.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_concurrent_requests_are_batched_and_answered_in_order(spec, tmp_path):
    calls = []
    sizes = [1 + i % 3 for i in range(16)]
    held = []  # armed once the model is loaded: the first call then holds the model

    def score(model, df, spec):
        calls.append(len(df))
        if held and len(calls) == 1:
            # the model is busy until every other request waits in the queue behind this call, so
            # the test sees what the batcher does with them, whatever the machine's speed
            queue, deadline = app.state.server._queue, time.monotonic() + 30
            while sum(calls) + sum(j.n for j in tuple(queue._queue)) < sum(sizes) and time.monotonic() < deadline:
                time.sleep(0.002)
        return df["pages_viewed"].to_numpy(dtype=float) / 1000.0

    app = _fake_app(spec, tmp_path, scorer=score, batch_wait_ms=20)

    async def run():
        import httpx

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                while (await ac.get("/ready")).status_code != 200:
                    await asyncio.sleep(0.01)
                calls.clear()
                held.append(True)
                reqs = [ac.post("/predict", json={"instances": [{**VALID, "pages_viewed": 10 * i + j + 1}
                                                                for j in range(n)]})
                        for i, n in enumerate(sizes)]
                return sizes, await asyncio.gather(*reqs)

    sizes, responses = asyncio.run(run())
    for i, (n, r) in enumerate(zip(sizes, responses, strict=True)):
        assert r.status_code == 200
        assert r.json()["predictions"] == [(10 * i + j + 1) / 1000 for j in range(n)]
    # every request queued while the model was busy went into the next model call (31 rows < batch_rows)
    assert sum(calls) == sum(sizes) and len(calls) <= 2, calls


def test_a_failing_request_does_not_fail_its_batch_neighbours(spec, tmp_path):
    def score(model, df, spec):
        if (df["pages_viewed"] == 13).any():
            raise ValueError("poisoned row")
        return np.zeros(len(df))

    app = _fake_app(spec, tmp_path, scorer=score, batch_wait_ms=20)

    async def run():
        import httpx

        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
                while (await ac.get("/ready")).status_code != 200:
                    await asyncio.sleep(0.01)
                return await asyncio.gather(*[ac.post("/predict", json={"instance": {**VALID, "pages_viewed": p}})
                                              for p in (12, 13, 14, 15)])

    statuses = [r.status_code for r in asyncio.run(run())]
    assert statuses == [200, 500, 200, 200]


def test_request_schema_is_derived_from_any_spec(tmp_path):
    from pydantic import ValidationError

    from include.serving.app import build_request_schema

    spec = parse_spec({
        "name": "houses", "key": "house id", "target": "price", "task": "regression",
        "columns": {
            "house id": {"dtype": "int"}, "price": {"dtype": "float"},
            "listed at": {"dtype": "datetime"}, "street name": {"dtype": "string", "nullable": True},
            "rooms": {"dtype": "int", "min": 1, "max": 12}, "kind": {"dtype": "category", "values": ["flat", "villa"]},
            "area m2": {"dtype": "float"},
        },
    })
    schema = build_request_schema(spec, max_rows=5)
    ok = schema.payload.model_validate_json(json.dumps({"instance": {
        "listed at": "2026-01-01T10:00:00+01:00", "rooms": 3, "kind": "flat", "area m2": 1e6, "house id": 9}}))
    cols = schema.columns_of(ok.rows())
    assert cols["street name"] == [None] and cols["house id"] == [9] and cols["area m2"] == [1e6]
    for bad in ({"rooms": 0}, {"kind": "castle"}, {"area m2": "big"}, {"listed at": "yesterday"},
                {"street name": "\ud800"}, {"price": 1.0}, {"rooms": 2**70}):
        row = {"listed at": "2026-01-01T00:00:00Z", "rooms": 3, "kind": "flat", "area m2": 50.0, **bad}
        with pytest.raises(ValidationError):
            schema.payload.model_validate({"instance": row})

    with TestClient(_fake_app(spec, tmp_path, scorer=lambda m, df, s: df["rooms"].to_numpy(dtype=float))) as c:
        wait_ready(c)
        r = c.post("/predict", json={"instances": [{"listed at": "2026-01-01T00:00:00Z", "rooms": 4,
                                                    "kind": "villa", "area m2": 80.5}]})
        assert r.status_code == 200 and r.json()["predictions"] == [4.0]
        assert c.get("/info").json()["golden_scores"]
        assert c.get("/openapi.json").status_code == 200
    logged = read_predictions(tmp_path, "fake")
    assert logged["listed at"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z")]
    assert logged["house id"].isna().all() and logged["rooms"].tolist() == [4]


def test_versions_must_be_registry_numbers(spec, tmp_path, monkeypatch):
    from include.serving.app import create_app, create_app_from_env

    with pytest.raises(ValueError, match="registry version number"):
        create_app("m", "champion", spec=spec, predictions_dir=tmp_path)
    monkeypatch.delenv("MLOPS_MODEL_VERSION", raising=False)
    with pytest.raises(RuntimeError, match="MLOPS_MODEL_VERSION"):
        create_app_from_env()
    monkeypatch.setenv("MLOPS_MODEL_VERSION", "4")
    monkeypatch.delenv("MLOPS_MODEL_NAME", raising=False)
    monkeypatch.delenv("MLOPS_DATASET", raising=False)
    with pytest.raises(RuntimeError, match="MLOPS_DATASET"):  # no silent default dataset
        create_app_from_env()
    monkeypatch.setenv("MLOPS_PREDICTIONS_DIR", str(tmp_path / "p"))
    monkeypatch.setenv("MLOPS_DATASET", "sessions")
    server = create_app_from_env().state.server  # the model comes from the dataset's spec
    assert (server.cfg.model_name, server.spec.name) == ("sessions_purchase", "sessions")
    monkeypatch.delenv("MLOPS_DATASET")
    monkeypatch.setenv("MLOPS_MODEL_NAME", "sessions_purchase")
    server = create_app_from_env().state.server  # ... and the dataset from the spec naming the model
    assert (server.cfg.model_name, server.cfg.version, server.spec.name) == ("sessions_purchase", "4", "sessions")
    assert server.predlog.dir == tmp_path / "p" / "sessions_purchase"


def test_shutdown_flushes_the_prediction_log(spec, tmp_path):
    with TestClient(_fake_app(spec, tmp_path, log_flush_seconds=3600)) as c:
        wait_ready(c)
        c.post("/predict", json={"instances": [VALID, VALID]}, headers={"X-Request-ID": "bye"})
    assert read_predictions(tmp_path, "fake")["request_id"].tolist() == ["bye", "bye"]
