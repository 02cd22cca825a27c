"""The model server scores HistGradientBoosting pipelines on the vectorised fast path, with the
same scores as the model's own predict, and keeps the model's predict when they would differ."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from include.spec import load_spec
from tests.unit.test_serving import mlflow_store

pytestmark = pytest.mark.slow  # trains and registers a real model (module fixture)


@pytest.fixture(scope="module")
def hgb(tmp_path_factory):
    spec = load_spec("sessions")
    tmp = tmp_path_factory.mktemp("serving-fastpath")
    with mlflow_store(tmp):
        from include.demo_data import make_batch
        from include.training.model_io import load_model
        from include.training.train import train_and_register

        df = pd.concat([make_batch(d, 800, seed=3) for d in range(2)], ignore_index=True)
        # missing values in training, so trees learn where a missing value goes
        df.loc[df.index[::5], "price_viewed"] = np.nan
        reg = train_and_register(df, spec, lineage={"data_rev": "test", "dataset": "sessions"},
                                 family="hgb", run_key="test-serving-fastpath", reason="test")
        yield {"spec": spec, "name": reg["model"], "version": reg["version"], "tmp": tmp,
               "model": load_model(reg["model"], reg["version"])}


def _client(hgb, **kw) -> TestClient:
    from include.serving.app import create_app

    return TestClient(create_app(hgb["name"], hgb["version"], spec=hgb["spec"],
                                 predictions_dir=hgb["tmp"] / "predictions", **kw))


def _ready(c: TestClient) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        r = c.get("/ready")
        if r.status_code == 200:
            return c.get("/info").json()
        assert r.json().get("state") != "failed", r.json()
        time.sleep(0.05)
    raise TimeoutError("model server not ready")


def _rows(df: pd.DataFrame, spec) -> list[dict]:
    cols = [c.name for c in spec.feature_columns]
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec.items()}
            for rec in df[cols].to_dict(orient="records")]


def test_the_fast_path_serves_with_the_model_s_own_scores_at_every_batch_size(hgb, monkeypatch):
    from include.demo_data import make_batch
    from include.training.metrics import predict_scores

    spec = hgb["spec"]
    rows = make_batch(9, 600, seed=5)
    rows.loc[rows.index[::3], "price_viewed"] = np.nan
    with _client(hgb) as c:
        info = _ready(c)
        assert info["scorer"] == "fast_path", info
        # 1 row and a micro-batch (scored on the event loop), and more rows than the all-trees walk
        # takes (QuickScorer, in the scoring thread)
        for n in (1, 8, 600):
            part = rows.head(n)
            r = c.post("/predict", json={"instances": _rows(part, spec)})
            assert r.status_code == 200, r.text
            want = predict_scores(hgb["model"], part.reset_index(drop=True), spec)
            np.testing.assert_array_equal(r.json()["predictions"], want)


def test_a_fast_path_that_disagrees_at_load_is_not_used(hgb, monkeypatch):
    from include.batch import fastpath
    from include.training.metrics import predict_scores

    real = fastpath.FastScorer.scores
    monkeypatch.setattr(fastpath.FastScorer, "scores", lambda self, xt: real(self, xt) + 1e-12)
    spec = hgb["spec"]
    from include.demo_data import make_batch

    part = make_batch(9, 5, seed=6)
    with _client(hgb) as c:
        assert _ready(c)["scorer"] == "model_predict"
        r = c.post("/predict", json={"instances": _rows(part, spec)})
        np.testing.assert_array_equal(r.json()["predictions"], predict_scores(hgb["model"], part, spec))


def test_the_fast_path_can_be_turned_off(hgb):
    with _client(hgb, fast_path=False) as c:
        assert _ready(c)["scorer"] == "model_predict"


def test_a_fast_path_that_raises_leaves_scoring_to_the_model_s_predict(hgb, monkeypatch):
    from include.batch import fastpath
    from include.demo_data import make_batch
    from include.serving import fastscore
    from include.training.metrics import predict_scores

    spec, part = hgb["spec"], make_batch(9, 4, seed=7)
    with _client(hgb) as c:  # at request time: the batch is scored by the model's own predict
        assert _ready(c)["scorer"] == "fast_path"

        def broken(*_a, **_k):
            raise ValueError("broken fast path")

        monkeypatch.setattr(fastscore, "fast_scores", broken)
        r = c.post("/predict", json={"instances": _rows(part, spec)})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(r.json()["predictions"], predict_scores(hgb["model"], part, spec))
    monkeypatch.undo()
    monkeypatch.setattr(fastpath.FastScorer, "scores", lambda self, xt: broken())
    with _client(hgb) as c:  # at load: the model's own predict serves
        assert _ready(c)["scorer"] == "model_predict"
