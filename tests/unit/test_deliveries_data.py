"""The second demo dataset (deliveries, a regression): seeded generator, spec and policies agree,
its batches pass ingest validation, each drift knob moves what it says, and the loop's own model
and drift check work on it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from include.demo_data_deliveries import TARGET, as_requests, make_batch, write_batch
from include.drift import DriftPolicy
from include.gate import load_policy
from include.spec import load_spec
from include.validation import check_batch


@pytest.fixture(scope="module")
def spec():
    return load_spec("deliveries")


def test_spec_matches_the_generator(spec):
    batch = make_batch(0, 50)
    assert spec.column_names == list(batch.columns)
    assert (spec.key, spec.timestamp, spec.target, spec.task) == ("delivery_id", "ts", TARGET, "regression")
    assert spec.model_name == "deliveries_eta"
    assert set(spec.slices) <= set(spec.categorical_features)
    for col in spec.categorical_features:
        assert set(batch[col]) <= set(spec.column(col).values)


def test_policies_load_and_name_real_features(spec):
    gate = load_policy("deliveries", "regression")
    assert gate.primary_metric == "rmse" and gate.slice_metric == "mae" and gate.source.endswith("deliveries.yaml")
    drift = DriftPolicy.load("deliveries")
    assert set(drift.critical_features) <= {c.name for c in spec.feature_columns}
    assert drift.min_sample_size < DriftPolicy().min_sample_size  # smaller batches than the sessions demo
    assert set(drift.quality_ceiling) == {"rmse"}


def test_seeded_and_distinct_per_day():
    a, b = make_batch(3, 200, seed=5), make_batch(3, 200, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not make_batch(4, 200, seed=5)[TARGET].equals(a[TARGET])
    assert a["delivery_id"].is_unique and a["ts"].is_monotonic_increasing
    assert (a["ts"].dt.normalize() == pd.Timestamp("2026-01-04", tz="UTC")).all()


def test_batches_pass_ingest_validation_with_and_without_drift(spec, tmp_path):
    # drifted data is different, not broken: both knobs at full strength must still be valid batches
    for i, batch in enumerate((make_batch(0, 1500), make_batch(1, 1500, covariate_drift=1.0, concept_drift=1.0))):
        path = write_batch(batch, tmp_path / f"deliveries-{i}.csv")
        df, report = check_batch(path, spec)
        assert report.success, report.summary()
        assert len(df) == 1500


def test_covariate_drift_shifts_the_inputs_it_names():
    base, moved = make_batch(0, 20_000), make_batch(0, 20_000, covariate_drift=1.0)
    assert moved["distance_km"].mean() > 1.5 * base["distance_km"].mean()
    assert moved["items"].mean() > base["items"].mean() + 1
    bad_weather = lambda b: b["weather"].isin(["rain", "snow"]).mean()  # noqa: E731
    assert bad_weather(moved) > bad_weather(base) + 0.2
    assert (moved["courier"] == "car").mean() > (base["courier"] == "car").mean() + 0.15
    assert (moved["hour"] >= 18).mean() > (base["hour"] >= 18).mean() + 0.15
    # the region mix is not one of the knob's features
    assert abs((moved["region"] == "center").mean() - (base["region"] == "center").mean()) < 0.02


def test_concept_drift_changes_only_the_target():
    base, moved = make_batch(0, 5_000), make_batch(0, 5_000, concept_drift=1.0)
    pd.testing.assert_frame_equal(base.drop(columns=[TARGET]), moved.drop(columns=[TARGET]))
    assert (moved[TARGET] >= base[TARGET]).mean() > 0.95  # congestion: every courier is slower
    assert moved[TARGET].mean() > 1.3 * base[TARGET].mean()


def test_requests_carry_features_and_key_but_no_answer():
    batch = make_batch(0, 300)
    rows = as_requests(batch)
    assert len(rows) == 300 and TARGET not in rows[0] and "ts" not in rows[0]
    assert rows[0]["delivery_id"] == batch["delivery_id"][0]
    assert any(r["temperature_c"] is None for r in rows)  # NaN travels as JSON null


@pytest.mark.slow
def test_the_loops_model_fits_it_and_the_drift_check_sees_covariate_drift(spec, tmp_path):
    from include.drift import compute_drift, decide_retrain
    from include.training.inputs import split
    from include.training.metrics import compute_metrics, model_input_columns, predict_scores
    from include.training.pipeline import build_pipeline

    df = pd.concat([make_batch(d, 1500) for d in range(2)], ignore_index=True)
    train, _, test = split(df, spec)
    model = build_pipeline(spec, "hgb").fit(train[model_input_columns(spec)], train[TARGET])
    metrics = compute_metrics(test[TARGET].to_numpy(float), predict_scores(model, test, spec), "regression")
    assert metrics["r2"] > 0.8, metrics  # measured 0.88 on 6,000 rows
    policy = DriftPolicy.load("deliveries")
    # concept drift leaves the inputs alone: the late labels' rmse ceiling is what catches it
    late = make_batch(9, 2000, concept_drift=1.0)
    stale = compute_metrics(late[TARGET].to_numpy(float), predict_scores(model, late, spec), "regression")
    assert stale["rmse"] > policy.quality_ceiling["rmse"]

    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    quiet = compute_drift(df, make_batch(9, 500, seed=7), spec, policy=policy, out_dir=tmp_path / "quiet")
    assert quiet.drifted_features == [] and decide_retrain(quiet, policy, [], now=now).code == "no_drift"
    moved = compute_drift(df, make_batch(9, 500, seed=7, covariate_drift=1.0), spec, policy=policy,
                          out_dir=tmp_path / "moved")
    assert {"distance_km", "weather"} <= set(moved.drifted_features)
    decision = decide_retrain(moved, policy, [], now=now)
    assert decision.retrain and decision.code == "drift"
    assert np.isfinite([f.score for f in moved.features]).all()
