"""train_and_register against real MLflow stores: SQLite (per test) and an `mlflow server` on PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from include.demo_data import make_batch
from include.spec import load_spec
from include.training.inputs import TrainingInputError, split
from include.training.metrics import predict_scores
from include.training.model_io import SKOPS_TRUSTED_TYPES, load_model
from include.training.train import train_and_register
from tests import services
from tests.services import SESSIONS_MODEL

pytestmark = pytest.mark.integration

LINEAGE = {"data_rev": "0123456789abcdef", "data_md5": "md5-aaa", "validation_id": "val-1",
           "dataset": "sessions", "dag_run_id": "manual__2026-01-01T00:00:00+00:00"}


@pytest.fixture(scope="module")
def spec():
    return load_spec("sessions")


@pytest.fixture(scope="module")
def batch():
    return make_batch(0, 2000, seed=11)


def _client():
    from include.tracking import client, configure_mlflow

    exp = configure_mlflow()
    return client(), exp


def c_exp_location(state):
    c, exp = _client()
    return c.get_experiment(exp).artifact_location


def _versions(name):
    c, _ = _client()
    return c.search_model_versions(f"name='{name}'")


def _live_runs(exp_id):
    c, _ = _client()
    return c.search_runs([exp_id])


# ------------------------------------------------------------------------------------- happy path


@pytest.mark.slow
def test_train_and_register_logs_everything_with_lineage(state, spec, batch):
    res = train_and_register(batch, spec, lineage=LINEAGE, family="hgb", seed=3, reason="new-data",
                             run_key="rk-full")
    c, exp = _client()
    assert res["model"] == SESSIONS_MODEL and res["version"] == "1" and not res["reused"]
    assert res["holdout_uri"] == f"runs:/{res['run_id']}/holdout/holdout.parquet"
    assert c_exp_location(state) == state.mlflow_artifact_root + "/mlops-loop"

    run = c.get_run(res["run_id"])
    p = run.data.params
    assert p["family"] == "hgb" and p["seed"] == "3" and p["data_rev"] == LINEAGE["data_rev"]
    assert p["n_train"] == "1200" and p["n_test"] == "400" and p["hp.max_iter"] == "200"
    m = run.data.metrics
    for part in ("train", "val", "test"):
        for metric in ("roc_auc", "accuracy", "f1", "log_loss"):
            assert f"{part}_{metric}" in m
    assert m["test_roc_auc"] == pytest.approx(res["metrics"]["test_roc_auc"])
    assert 0.6 < m["test_roc_auc"] < 0.9
    assert "test_roc_auc__device.mobile" in m and "test_n__channel.email" in m
    sha = run.data.tags["code_sha"]
    assert run.data.tags["run_key"] == "rk-full" and re.fullmatch("[0-9a-f]{40}", sha)  # HEAD may move meanwhile

    # datasets: train/val/test with the DVC source at the data rev
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    assert inputs["training"].source_type == "dvc"
    assert '"rev": "0123456789abcdef"' in inputs["training"].source

    arts = {a.path for d in ("plots", "holdout") for a in c.list_artifacts(res["run_id"], d)}
    assert {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/permutation_importance.png",
            "plots/permutation_importance.json", "holdout/holdout.parquet"} <= arts

    # the holdout is the test split, with every spec column
    import mlflow

    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(res["holdout_uri"]))
    _, _, test = split(batch, spec)
    assert list(holdout.columns) == spec.column_names
    assert list(holdout[spec.key]) == list(test[spec.key])

    # exactly one version, with every lineage tag
    (mv,) = _versions(SESSIONS_MODEL)
    assert mv.run_id == res["run_id"] and mv.status == "READY"
    expected = {**LINEAGE, "code_sha": sha, "reason": "new-data", "run_key": "rk-full", "family": "hgb"}
    assert {k: mv.tags.get(k) for k in expected} == expected

    # the model: skops with our allow-list, a signature and an input example
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{SESSIONS_MODEL}/1"))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["sklearn"]["serialization_format"] == "skops"
    assert mlmodel["flavors"]["sklearn"]["skops_trusted_types"] == SKOPS_TRUSTED_TYPES
    assert "signature" in mlmodel and (local / "input_example.json").exists()
    model = load_model(SESSIONS_MODEL, 1)
    scores = predict_scores(model, holdout, spec)
    assert scores.shape == (400,)


@pytest.mark.slow
def test_same_run_key_adds_no_version(state, spec, batch):
    first = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-idem")
    again = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-idem")
    assert again["reused"] and (again["version"], again["run_id"]) == (first["version"], first["run_id"])
    assert again["metrics"] == pytest.approx(first["metrics"])
    _, exp = _client()
    assert len(_versions(SESSIONS_MODEL)) == 1 and len(_live_runs(exp)) == 1


@pytest.mark.slow
def test_retraining_same_data_and_seed_gives_identical_predictions(state, spec, batch):
    key = "sessions-hgb-seed5"
    a = train_and_register(batch, spec, lineage=LINEAGE, family="hgb", seed=5, run_key=key)
    b = train_and_register(batch, spec, lineage=LINEAGE, family="hgb", seed=5, run_key=key + "-bis", force=True)
    assert a["version"] != b["version"]
    fresh = make_batch(9, 500, seed=1)
    pa = predict_scores(load_model(SESSIONS_MODEL, a["version"]), fresh, spec)
    pb = predict_scores(load_model(SESSIONS_MODEL, b["version"]), fresh, spec)
    np.testing.assert_array_equal(pa, pb)
    assert a["metrics"] == b["metrics"]


@pytest.mark.slow
def test_search_logs_candidates_and_picks_by_val(state, spec, batch):
    res = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", search=True, run_key="rk-search")
    c, _ = _client()
    history = c.get_metric_history(res["run_id"], "search_val_roc_auc")
    assert len(history) == 3
    best_c = c.get_run(res["run_id"]).data.params["hp.C"]
    assert {a.path for a in c.list_artifacts(res["run_id"], "search")} == {"search/candidates.json"}
    best = max(history, key=lambda h: h.value)
    assert float(best_c) == [0.1, 1.0, 10.0][best.step]


# -------------------------------------------------------------------------------- crash leftovers


@pytest.mark.slow
def test_failed_registration_leaves_no_version_and_retry_registers_once(state, spec, batch, monkeypatch):
    import mlflow

    import include.training.train as training

    real = mlflow.register_model

    def register_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("registry connection lost after create")

    monkeypatch.setattr(training.mlflow, "register_model", register_then_die)
    with pytest.raises(RuntimeError, match="connection lost"):
        train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-crash")
    monkeypatch.setattr(training.mlflow, "register_model", real)

    c, exp = _client()
    assert _versions(SESSIONS_MODEL) == []
    (failed,) = _live_runs(exp)
    assert failed.info.status == "FAILED"

    res = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-crash")
    (mv,) = _versions(SESSIONS_MODEL)
    assert mv.run_id == res["run_id"] and not res["reused"]
    assert [r.info.run_id for r in _live_runs(exp)] == [res["run_id"]]  # the failed run was deleted


@pytest.mark.slow
def test_orphan_run_without_version_is_replaced(state, spec, batch):
    import mlflow

    _, exp = _client()
    with mlflow.start_run(experiment_id=exp, tags={"run_key": "rk-orphan"}) as orphan:
        pass
    # lineage straight from the `dataset` Asset extra ({dvc_rev, md5, ...}) works too
    asset_extra = {"dataset": "sessions", "dvc_rev": "feedbeef", "md5": "md5-x", "rows": 2000,
                   "validation_id": "val-9", "dag_run_id": "asset_triggered__x"}
    res = train_and_register(batch, spec, lineage=asset_extra, family="logreg", run_key="rk-orphan")
    assert res["run_id"] != orphan.info.run_id
    assert [r.info.run_id for r in _live_runs(exp)] == [res["run_id"]]
    (mv,) = _versions(SESSIONS_MODEL)
    assert (mv.tags["data_rev"], mv.tags["data_md5"], mv.tags["validation_id"]) == ("feedbeef", "md5-x", "val-9")


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda d: d.drop(columns=["purchased"]), {}, "target column 'purchased'"),
        (lambda d: d.drop(columns=["pages_viewed"]), {}, r"feature column\(s\) \['pages_viewed'\]"),
        (lambda d: d.head(40), {}, "too small to split"),
        (lambda d: d.assign(purchased=1), {}, "single class"),
        (lambda d: d, {"family": "xgboost"}, "known families: logreg, hgb"),
        (lambda d: d, {"params": {"max_depthh": 3}}, "bad params"),
        (lambda d: d, {"run_key": "it's"}, "without quotes"),
        # a time split whose test part (the newest rows) has one class only
        (lambda d: d.assign(purchased=np.r_[np.resize([0, 1], 1600), np.zeros(400, int)]), {},
         "the test split .* has a single class"),
    ],
    ids=["no-target", "no-feature", "too-small", "single-class", "unknown-family", "bad-params", "bad-run-key",
         "single-class-holdout"],
)
def test_bad_inputs_fail_clearly_and_register_nothing(state, spec, batch, mutate, kwargs, message):
    kw = {"lineage": LINEAGE, "run_key": "rk-bad", **kwargs}
    with pytest.raises(TrainingInputError, match=message):
        train_and_register(mutate(batch.copy()), spec, **kw)
    c, exp = _client()
    assert c.search_registered_models() == [] and _live_runs(exp) == []


@pytest.mark.slow
def test_load_model_refuses_types_outside_the_allow_list(state, spec):
    """A model whose own MLmodel trusts an extra type is still refused: the list comes from our code."""
    import operator

    import mlflow
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    _, exp = _client()
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    model = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression()).fit(X, [0, 1, 0, 1])
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.sklearn.log_model(model, name="model", skops_trusted_types=[*SKOPS_TRUSTED_TYPES, "_operator.neg"])
    mv = mlflow.register_model(info.model_uri, SESSIONS_MODEL)
    with pytest.raises(ValueError, match=r"outside SKOPS_TRUSTED_TYPES: \['_operator.neg'\]"):
        load_model(SESSIONS_MODEL, mv.version)


# ------------------------------------------------------------------------- distributed: PostgreSQL


@pytest.fixture
def mlflow_server(state, tmp_path, monkeypatch):
    """`mlflow server` on a fresh PostgreSQL database; the env points MLflow at it; dropped after."""
    with services.mlflow_server(tmp_path / "mlflow-server.log",
                                "--default-artifact-root", str(tmp_path / "server-artifacts")) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
        monkeypatch.delenv("MLOPS_MLFLOW_ARTIFACT_ROOT")  # the server decides where artifacts go
        yield url


@pytest.mark.slow
def test_train_register_and_gate_on_mlflow_server_with_postgres(mlflow_server, spec, tmp_path):
    import mlflow

    from include.gate import evaluate_and_decide
    from include.tracking import client, configure_mlflow

    exp_id = configure_mlflow()
    assert mlflow.get_tracking_uri() == mlflow_server
    assert client().get_experiment(exp_id).artifact_location.startswith(str(tmp_path / "server-artifacts"))

    batch = make_batch(0, 1500, seed=2)
    res = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-pg")
    again = train_and_register(batch, spec, lineage=LINEAGE, family="logreg", run_key="rk-pg")
    assert again["reused"] and again["version"] == res["version"] == "1"
    (mv,) = client().search_model_versions("name='sessions_purchase' and tags.run_key='rk-pg'")
    assert mv.tags["data_rev"] == LINEAGE["data_rev"]
    scores = predict_scores(load_model("sessions_purchase", res["version"]), batch.head(10), spec)
    assert scores.shape == (10,)

    gate = evaluate_and_decide("sessions_purchase", res["version"], dataset="sessions", trigger={"reason": "test"})
    assert gate["decision"] == "passed"
    assert client().get_model_version_by_alias("sessions_purchase", "challenger").version in (1, "1")
