"""Drift checks with real Evidently on the demo generator, a real MLflow store and the trigger log."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.demo_data import make_batch
from include.drift import (
    DriftPolicy,
    compute_drift,
    load_trigger_history,
    reference_for_model,
    run_drift_check,
)
from include.spec import load_spec
from tests.services import SESSIONS_MODEL

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# What make_batch(covariate_drift=1) moves: device/channel mix, returning share, pages, session
# length, discounts, and cart_items through pages/returning. country and price_viewed stay put.
SHIFTED = {"device", "channel", "returning", "pages_viewed", "session_seconds", "cart_items", "discount_pct"}
STABLE = {"country", "price_viewed"}
POLICY = DriftPolicy(critical_features=("cart_items", "discount_pct"))


@pytest.fixture(scope="module")
def spec():
    return load_spec("sessions")


@pytest.fixture(scope="module")
def reference():
    return make_batch(0, 8_000, seed=21)


def _oracle_scores(df: pd.DataFrame) -> np.ndarray:
    """P(purchase) under the generator's pre-drift mechanism: a perfect champion before drift."""
    logit = (-3.2 + 1.1 * np.log1p(df["cart_items"]) + 0.9 * df["returning"] + 0.035 * df["pages_viewed"]
             + 0.04 * df["discount_pct"] + 0.5 * (df["device"] == "desktop")
             + np.where(df["channel"] == "email", 0.6, 0.0) - np.where(df["channel"] == "social", 0.5, 0.0)
             - 0.15 * np.log1p(df["price_viewed"].fillna(50.0)))
    return 1 / (1 + np.exp(-logit.to_numpy(float)))


def _register_version(name: str) -> str:
    """A registered model version to tag (no real model needed for monitoring)."""
    import mlflow

    from include.tracking import client, configure_mlflow

    configure_mlflow()
    with mlflow.start_run() as run:
        mlflow.log_dict({"dummy": True}, "model/placeholder.json")
    c = client()
    c.create_registered_model(name)
    return str(c.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version)


def test_no_drift_between_two_days_of_the_same_process(spec, reference, tmp_path):
    current = make_batch(1, 8_000, seed=21)
    res = compute_drift(reference, current, spec, policy=POLICY, out_dir=tmp_path)
    assert res.drifted_features == []
    assert res.share_drifted == 0.0
    assert all(f.score < 0.05 for f in res.features)  # sampling noise is far below the 0.1 floor
    assert {f.column for f in res.features} == {c.name for c in spec.feature_columns}
    assert Path(res.report_html).stat().st_size > 10_000
    from include.drift import decide_retrain

    d = decide_retrain(res, POLICY, [], now=NOW)
    assert (d.retrain, d.code) == (False, "no_drift")


def test_types_follow_the_spec_not_the_logged_dtypes(spec, reference, tmp_path):
    """A numeric feature that arrives as strings is still compared as numbers; 0/1 as categories."""
    current = make_batch(1, 8_000, seed=21)
    current = current.assign(pages_viewed=current["pages_viewed"].astype(str),
                             device=current["device"].astype("category"))
    res = compute_drift(reference, current, spec, policy=POLICY, out_dir=tmp_path)
    kinds = {f.column: (f.kind, f.method, f.test) for f in res.features}
    assert kinds["pages_viewed"] == ("numeric", "wasserstein", "ks")
    assert kinds["returning"] == ("categorical", "jensenshannon", "chi2")
    assert kinds["device"] == ("categorical", "jensenshannon", "chi2")
    assert res.drifted_features == []


@pytest.mark.slow
def test_covariate_drift_retrains_on_the_shifted_features_and_logs_everything(state, spec, reference):
    from include.tracking import client

    version = _register_version(SESSIONS_MODEL)
    current = make_batch(5, 8_000, seed=21, covariate_drift=1.0)
    reference = reference.assign(prediction=_oracle_scores(reference))
    current = current.assign(prediction=_oracle_scores(current))
    s = run_drift_check(dataset="sessions", model_name=SESSIONS_MODEL, model_version=version,
                        reference_df=reference, current_df=current, policy=POLICY, now=NOW,
                        run_key="scheduled__2026-03-01T12:00:00+00:00")
    assert set(s["drifted_features"]) == SHIFTED
    assert s["share_drifted"] == pytest.approx(7 / 9)
    assert s["decision"]["retrain"] is True and s["decision"]["code"] == "drift"
    assert "critical feature(s) drifted: cart_items, discount_pct" in s["decision"]["reason"]
    assert s["prediction_drift"]["drifted"] is True  # the scores moved with the inputs
    assert "prediction" not in s["drifted_features"]
    assert s["train_conf"]["reason"] == "drift" and set(s["train_conf"]["drifted_features"]) == SHIFTED
    assert "window_days" not in s["train_conf"]  # retrain_window_days is off in this policy
    assert (s["n_reference"], s["n_current"]) == (8_000, 8_000)
    json.dumps(s)  # small and JSON-able: fit for XCom and dag-run conf

    # the Evidently report, saved locally and logged to the monitoring run
    html = Path(s["report_path"])
    text = html.read_text()
    assert html.exists() and "discount_pct" in text and "session_seconds" in text
    assert (html.parent / "drift_report.json").exists() and (html.parent / "drift_result.json").exists()
    assert s["report_uri"] == f"runs:/{s['mlflow_run_id']}/drift_report/drift_report.html"

    c = client()
    run = c.get_run(s["mlflow_run_id"])
    assert c.get_experiment(run.info.experiment_id).name == "monitoring"
    assert run.data.tags["model_name"] == SESSIONS_MODEL and run.data.tags["model_version"] == version
    assert run.data.tags["drift.retrain"] == "true"
    assert run.data.metrics["share_drifted"] == pytest.approx(7 / 9)
    assert run.data.metrics["drift_score.discount_pct"] > 1.0
    assert run.data.metrics["drift_score.country"] < 0.1
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "drift_report")}
    assert {"drift_report/drift_report.html", "drift_report/drift_result.json"} <= arts
    assert c.get_model_version(SESSIONS_MODEL, version).tags["last_drift_run_id"] == run.info.run_id

    # a retry of the same Airflow run changes nothing: same answer, no second run, no second line
    again = run_drift_check(dataset="sessions", model_name=SESSIONS_MODEL, model_version=version,
                            reference_df=reference, current_df=current, policy=POLICY, now=NOW,
                            run_key="scheduled__2026-03-01T12:00:00+00:00")
    assert again["replayed"] and again["mlflow_run_id"] == s["mlflow_run_id"]
    assert len(c.search_runs([run.info.experiment_id])) == 1
    assert len(load_trigger_history(model_name=SESSIONS_MODEL)) == 1

    # the next scheduled check an hour later still sees drift but is inside the cooldown
    later = run_drift_check(dataset="sessions", model_name=SESSIONS_MODEL, model_version=version,
                            reference_df=reference, current_df=current, policy=POLICY,
                            now=NOW + dt.timedelta(hours=1), run_key="scheduled__2026-03-01T13:00:00+00:00")
    assert later["decision"]["retrain"] is False and later["decision"]["code"] == "cooldown"
    assert later["train_conf"] is None
    history = load_trigger_history(model_name=SESSIONS_MODEL)
    assert [(h["code"], h["retrain"]) for h in history] == [("drift", True), ("cooldown", False)]
    assert (state.reports_dir / "drift" / "triggers.jsonl").exists()


@pytest.mark.slow
def test_parquet_window_is_streamed_and_small_windows_are_not_judged(state, spec, reference, tmp_path):
    current = make_batch(5, 12_000, seed=21, covariate_drift=1.0)
    window = tmp_path / "window"
    window.mkdir()
    for i in range(3):
        current.iloc[i * 4_000:(i + 1) * 4_000].to_parquet(window / f"part-{i}.parquet", row_group_size=1_000)
    policy = DriftPolicy(sample_size=6_000, min_sample_size=500)
    s = run_drift_check(dataset="sessions", model_name="m", model_version=1, reference_df=reference,
                        current_df=window, policy=policy, now=NOW, log_mlflow=False)
    assert (s["n_current_total"], s["n_current"], s["n_reference"]) == (12_000, 6_000, 6_000)
    assert set(s["drifted_features"]) == SHIFTED and s["decision"]["retrain"]

    tiny = run_drift_check(dataset="sessions", model_name="m", model_version=1, reference_df=reference,
                           current_df=current.head(300), policy=policy, now=NOW + dt.timedelta(days=1),
                           log_mlflow=False)
    assert tiny["decision"]["code"] == "insufficient_sample" and tiny["decision"]["judged"] is False
    assert tiny["report_path"] is None and tiny["mlflow_run_id"] is None
    assert [h["code"] for h in load_trigger_history(model_name="m")] == ["drift", "insufficient_sample"]


@pytest.mark.slow
def test_concurrent_checks_cannot_both_retrain(state, spec, reference):
    """Two checks racing (e.g. a manual run next to the scheduled one): one retrains, one cools down."""
    from concurrent.futures import ThreadPoolExecutor

    current = make_batch(5, 4_000, seed=21, covariate_drift=1.0)

    def check(key):
        return run_drift_check(dataset="sessions", model_name="m", model_version=1, reference_df=reference,
                               current_df=current, policy=POLICY, now=NOW, log_mlflow=False, run_key=key)

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(s["decision"]["code"] for s in pool.map(check, ["manual__a", "scheduled__b"]))
    assert codes == ["cooldown", "drift"]
    assert sorted(h["code"] for h in load_trigger_history(model_name="m")) == ["cooldown", "drift"]


@pytest.mark.slow
def test_concept_drift_is_caught_by_late_labels_not_by_the_inputs(state, spec, reference):
    current = make_batch(9, 8_000, seed=21, concept_drift=1.0)
    current = current.assign(prediction=_oracle_scores(current))
    labels = current[["session_id", "purchased"]]
    served = current.drop(columns=["purchased"])
    policy = DriftPolicy(quality_floor={"roc_auc": 0.65}, min_labeled=1_000)
    s = run_drift_check(dataset="sessions", model_name="m", model_version=1, reference_df=reference,
                        current_df=served, labeled_df=labels, policy=policy, now=NOW, log_mlflow=False,
                        prediction_col="prediction")
    assert s["drifted_features"] == []
    assert s["quality"]["n_labeled"] == 8_000 and s["quality"]["metrics"]["roc_auc"] < 0.65
    assert s["decision"]["retrain"] and s["decision"]["code"] == "quality" and "roc_auc" in s["decision"]["reason"]
    assert s["train_conf"]["reason"] == "drift" and s["train_conf"]["trigger"] == "quality"


@pytest.mark.slow
def test_reference_for_a_registered_version_comes_from_its_dvc_rev(state, spec):
    """The DAG-facing path: data at the champion's data_rev, with its out-of-sample scores."""
    from include.training.train import train_and_register
    from include.versioning import DataRepo

    batch = make_batch(0, 3_000, seed=5)
    v = DataRepo().commit_batch("sessions", batch, batch_md5="md5-drift-test", batch_name="day-0",
                                validation_id="val-0")
    res = train_and_register(batch, spec, lineage={"data_rev": v.dvc_rev, "data_md5": v.md5,
                                                   "validation_id": "val-0", "dataset": "sessions"},
                             family="logreg", run_key="drift-ref-test")
    ref = reference_for_model(SESSIONS_MODEL, res["version"])
    assert len(ref) == 3_000 and set(ref["session_id"]) == set(batch["session_id"])
    scored = ref["prediction"].notna()
    assert scored.sum() == 1_200  # val + test (20% + 20%): only rows the model did not train on
    assert ref.loc[scored, "prediction"].between(0, 1).all()

    current = make_batch(3, 3_000, seed=5)
    s = run_drift_check(dataset="sessions", model_name=SESSIONS_MODEL, model_version=res["version"],
                        reference_df=ref, current_df=current.assign(prediction=ref["prediction"].mean()),
                        policy=DriftPolicy(), now=NOW, log_mlflow=False, record=False)
    assert s["drifted_features"] == [] and s["decision"]["code"] == "no_drift"


@pytest.mark.slow
def test_window_read_from_the_serving_prediction_log(state, spec, reference):
    """The contract with include.serving.predlog: read_predictions output goes straight in."""
    from include.serving.predlog import PredictionLog, read_predictions

    served = make_batch(5, 6_000, seed=21, covariate_drift=1.0)
    plog = PredictionLog(state.predictions_dir, SESSIONS_MODEL, spec)
    cols = [spec.key] + [c.name for c in spec.feature_columns]
    for i in range(0, len(served), 500):  # 12 requests of 500 rows, one hour apart
        part = served.iloc[i:i + 500]
        plog.append(f"req-{i}", NOW + dt.timedelta(hours=i // 500), "3", _oracle_scores(part).tolist(),
                    {c: part[c].tolist() for c in cols})
    plog.flush()
    window = read_predictions(state.predictions_dir, SESSIONS_MODEL, since=NOW,
                              until=NOW + dt.timedelta(days=1), model_version="3")
    assert len(window) == 6_000
    labels = served[[spec.key, spec.target]]
    s = run_drift_check(dataset="sessions", model_name=SESSIONS_MODEL, model_version="3",
                        reference_df=reference.assign(prediction=_oracle_scores(reference)),
                        current_df=window, labeled_df=labels, policy=POLICY,
                        now=NOW + dt.timedelta(days=1), log_mlflow=False, record=False)
    assert set(s["drifted_features"]) == SHIFTED and s["decision"]["retrain"]
    assert s["quality"]["n_labeled"] == 6_000 and s["quality"]["metrics"]["roc_auc"] > 0.7
    assert s["prediction_drift"] is not None
