"""Drift statistics, retrain policy and trigger log: pure functions, no Evidently, MLflow or Airflow."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from include.drift import (
    Decision,
    DriftPolicy,
    DriftResult,
    FeatureDrift,
    adjust_pvalues,
    apply_criteria,
    decide_retrain,
    join_labels,
    load_trigger_history,
    record_trigger,
    sample_for_drift,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
FEATURES = ["device", "country", "channel", "returning", "pages_viewed", "session_seconds",
            "cart_items", "discount_pct", "price_viewed", "extra"]


def feature(column, *, score=0.0, p=0.5, kind="numeric", floor=0.1) -> FeatureDrift:
    return FeatureDrift(column=column, kind=kind, method="wasserstein" if kind == "numeric" else "jensenshannon",
                        score=score, effect_floor=floor, test="ks" if kind == "numeric" else "chi2",
                        p_value=p)


def result(drifted=(), *, n_current=5_000, n_reference=20_000, quality=None, prediction=None,
           policy=None) -> DriftResult:
    """A judged result over 10 features of which ``drifted`` clearly moved."""
    policy = policy or DriftPolicy()
    feats = [feature(c, score=0.5, p=1e-12) if c in drifted else feature(c, score=0.01, p=0.6)
             for c in FEATURES]
    apply_criteria(feats, alpha=policy.alpha, correction=policy.correction)
    return DriftResult(dataset="sessions", features=feats, n_reference=n_reference, n_current=n_current,
                       n_reference_total=n_reference, n_current_total=n_current, alpha=policy.alpha,
                       correction=policy.correction, quality=quality, prediction=prediction)


def trig(hours_ago: float, *, model="m", retrain=True) -> dict:
    return {"at": (NOW - dt.timedelta(hours=hours_ago)).isoformat(), "model_name": model, "retrain": retrain}


# ------------------------------------------------------------------------ multiple testing


def test_benjamini_hochberg_matches_hand_computation_and_its_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> p*m/rank 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # the definition, written out: adjusted p_(i) = min over j >= i of min(1, p_(j) * m / j)
    q = list(np.random.default_rng(0).random(37) ** 3) + [float("nan")]
    ranked = sorted(x for x in q if not math.isnan(x))
    m = len(ranked)
    step_up = {x: min(min(1.0, ranked[j] * m / (j + 1)) for j in range(i, m)) for i, x in enumerate(ranked)}
    out = adjust_pvalues(q, "bh")
    assert out[:-1] == pytest.approx([step_up[x] for x in q[:-1]]) and math.isnan(out[-1])


def test_benjamini_hochberg_step_up_is_monotone_and_capped():
    # sorted 0.0067, 0.01, 0.9 -> p*m/rank 0.02, 0.015, 0.9; step-up: rank 2 pulls rank 1 to 0.015
    assert adjust_pvalues([0.01, 0.9, 0.01 * 2 / 3], "bh") == pytest.approx([0.015, 0.9, 0.015])
    assert adjust_pvalues([0.6, 0.8], "bh") == pytest.approx([0.8, 0.8])


def test_bonferroni_and_none_and_nan():
    assert adjust_pvalues([0.01, 0.04, 0.3, 0.005], "bonferroni") == pytest.approx([0.04, 0.16, 1.0, 0.02])
    assert adjust_pvalues([0.01, 0.2], "none") == [0.01, 0.2]
    out = adjust_pvalues([0.01, float("nan"), 0.02], "bonferroni")  # NaN does not count towards m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="correction"):
        adjust_pvalues([0.1], "holm")


def test_correction_removes_a_chance_finding_among_many_features():
    feats = [feature("lucky", score=0.3, p=0.02)] + [feature(f"f{i}", score=0.3, p=0.5) for i in range(9)]
    apply_criteria(feats, alpha=0.05, correction="none")
    assert feats[0].drifted  # uncorrected, one in ten innocent features would pass at 0.05
    apply_criteria(feats, alpha=0.05, correction="bh")
    assert feats[0].p_adjusted == pytest.approx(0.2) and not feats[0].drifted
    apply_criteria(feats, alpha=0.05, correction="bonferroni")
    assert not feats[0].drifted


def test_effect_size_floor_ignores_significant_but_trivial_shifts():
    feats = [
        feature("huge_sample_wobble", score=0.03, p=1e-30),  # significant, below the floor
        feature("real_shift", score=0.45, p=1e-30),
        feature("noisy_small_sample", score=0.4, p=0.3),  # above the floor, not significant
        feature("cat_shift", score=0.12, p=1e-9, kind="categorical"),
        feature("untested", score=float("nan"), p=float("nan")),
    ]
    apply_criteria(feats, alpha=0.05, correction="bh")
    assert [f.column for f in feats if f.drifted] == ["real_shift", "cat_shift"]
    assert feats[0].significant and not feats[0].drifted
    assert not feats[2].significant


# ------------------------------------------------------------------------------- decisions


def test_below_min_sample_makes_no_judgement():
    d = decide_retrain(result(FEATURES, n_current=499), DriftPolicy(min_sample_size=500), [], now=NOW)
    assert (d.retrain, d.judged, d.code, d.drifted_features) == (False, False, "insufficient_sample", [])
    d = decide_retrain(result(FEATURES, n_reference=100), DriftPolicy(), [], now=NOW)
    assert d.code == "insufficient_sample"


def test_no_drift_no_retrain():
    d = decide_retrain(result(), DriftPolicy(), [], now=NOW)
    assert (d.retrain, d.code, d.judged, d.drift_detected) == (False, "no_drift", True, False)


def test_small_share_without_critical_features_is_not_drift():
    d = decide_retrain(result(["device", "channel"]), DriftPolicy(drift_share=0.3), [], now=NOW)
    assert d.code == "no_drift" and d.drifted_features == ["device", "channel"]


def test_drift_triggers_retrain_with_the_drifted_features():
    drifted = ["device", "channel", "pages_viewed", "discount_pct"]
    d = decide_retrain(result(drifted), DriftPolicy(drift_share=0.3), [], now=NOW)
    assert d.retrain and d.code == "drift" and d.drift_detected
    assert d.drifted_features == drifted
    assert "4/10 features drifted" in d.reason
    assert d.at == NOW.isoformat()


def test_a_critical_feature_alone_triggers():
    d = decide_retrain(result(["discount_pct"]), DriftPolicy(critical_features=("discount_pct",)), [], now=NOW)
    assert d.retrain and "critical feature(s) drifted: discount_pct" in d.reason


def test_second_drift_inside_cooldown_is_suppressed_then_allowed_after():
    policy = DriftPolicy(cooldown_hours=6)
    drifted = result(FEATURES[:5])
    first = decide_retrain(drifted, policy, [], now=NOW)
    assert first.retrain
    history = [{"at": first.at, "model_name": "m", "retrain": True}]
    second = decide_retrain(drifted, policy, history, now=NOW + dt.timedelta(hours=2), model_name="m")
    assert (second.retrain, second.code, second.drift_detected) == (False, "cooldown", True)
    assert second.reason.startswith("cooldown:") and second.drifted_features == FEATURES[:5]
    assert second.details["cooldown_until"] == (NOW + dt.timedelta(hours=6)).isoformat()
    later = decide_retrain(drifted, policy, history, now=NOW + dt.timedelta(hours=6, minutes=1), model_name="m")
    assert later.retrain


def test_cooldown_counts_only_triggers_of_this_model_and_also_a_fresh_retrain():
    policy = DriftPolicy(cooldown_hours=6)
    drifted = result(FEATURES[:5])
    other_model_and_skips = [trig(1, model="other"), trig(1, retrain=False)]
    assert decide_retrain(drifted, policy, other_model_and_skips, now=NOW, model_name="m").retrain
    d = decide_retrain(drifted, policy, [], now=NOW, last_retrain_at=NOW - dt.timedelta(hours=1))
    assert d.code == "cooldown"
    # plain timestamps are accepted as history (each one a trigger)
    assert decide_retrain(drifted, policy, [NOW - dt.timedelta(minutes=5)], now=NOW).code == "cooldown"


def test_daily_cap_is_a_rolling_24h_window():
    policy = DriftPolicy(cooldown_hours=6, max_retrains_per_day=3)
    drifted = result(FEATURES[:5])
    three = [trig(20), trig(14), trig(7)]
    d = decide_retrain(drifted, policy, three, now=NOW, model_name="m")
    assert (d.retrain, d.code, d.drift_detected) == (False, "daily_cap", True)
    assert d.details["retrains_last_24h"] == 3
    assert decide_retrain(drifted, policy, [trig(25), trig(14), trig(7)], now=NOW, model_name="m").retrain
    assert decide_retrain(drifted, DriftPolicy(max_retrains_per_day=0), [], now=NOW).code == "daily_cap"


def test_future_triggers_count_as_recent():
    d = decide_retrain(result(FEATURES[:5]), DriftPolicy(), [trig(-1)], now=NOW, model_name="m")
    assert d.code == "cooldown"


def test_quality_floor_needs_enough_labels():
    policy = DriftPolicy(quality_floor={"roc_auc": 0.65}, quality_ceiling={"log_loss": 0.5}, min_labeled=1000)
    bad = {"n_labeled": 1500, "metrics": {"roc_auc": 0.6, "log_loss": 0.4}}
    d = decide_retrain(result(quality=bad), policy, [], now=NOW)
    assert d.retrain and d.code == "quality" and "roc_auc 0.6000 < floor 0.65" in d.reason
    assert d.drifted_features == []
    few = {"n_labeled": 999, "metrics": {"roc_auc": 0.5}}
    assert decide_retrain(result(quality=few), policy, [], now=NOW).code == "no_drift"
    lossy = {"n_labeled": 1500, "metrics": {"roc_auc": 0.7, "log_loss": 0.6}}
    assert "log_loss 0.6000 > ceiling 0.5" in decide_retrain(result(quality=lossy), policy, [], now=NOW).reason


def test_prediction_drift_triggers_only_when_the_policy_says_so():
    pred = apply_criteria([feature("prediction", score=0.8, p=1e-20)], alpha=0.05, correction="none")[0]
    assert decide_retrain(result(prediction=pred), DriftPolicy(), [], now=NOW).code == "no_drift"
    d = decide_retrain(result(prediction=pred), DriftPolicy(prediction_drift_triggers=True), [], now=NOW)
    assert d.retrain and "prediction drift" in d.reason


def test_naive_now_is_utc():
    d = decide_retrain(result(), DriftPolicy(), [], now=dt.datetime(2026, 3, 1, 12, 0))
    assert d.at == NOW.isoformat()


# --------------------------------------------------------------------------------- policy


def test_policy_file_and_defaults(tmp_path):
    p = DriftPolicy.load("sessions")
    assert p.correction in ("bh", "bonferroni") and p.cooldown_hours > 0 and p.max_retrains_per_day >= 1
    assert set(p.critical_features) <= {"device", "country", "channel", "returning", "pages_viewed",
                                        "session_seconds", "cart_items", "discount_pct", "price_viewed"}
    assert DriftPolicy.load("no-such-dataset", tmp_path) == DriftPolicy()
    (tmp_path / "drift_x.yaml").write_text("drift:\n  alpha: 0.01\n  critical_features: [a]\n")
    assert DriftPolicy.load("x", tmp_path) == DriftPolicy(alpha=0.01, critical_features=("a",))


@pytest.mark.parametrize("raw, message", [
    ({"alpah": 0.05}, "d.yaml: unknown key 'alpah' (known: ['alpha', "),
    ({"explicit": ["alpha"]}, "d.yaml: unknown key 'explicit'"),
    ({"correction": "holm"}, "d.yaml: correction: Input should be 'bh', 'bonferroni' or 'none', got 'holm'"),
    ({"alpha": 1.5}, "d.yaml: alpha: Input should be less than 1, got 1.5"),
    ({"drift_share": 0}, "drift_share: Input should be greater than 0, got 0"),
    ({"cooldown_hours": -1}, "cooldown_hours: Input should be greater than or equal to 0, got -1"),
    ({"sample_size": True}, "sample_size: Input should be a valid integer, got True"),
    ({"prediction_drift_triggers": "maybe"}, "prediction_drift_triggers: Input should be a valid boolean, got 'maybe'"),
    ({"quality_floor": {"roc_auc": "high"}}, "quality_floor.roc_auc: Input should be a valid number"),
    ({"min_sample_size": 10, "sample_size": 5}, "d.yaml: min_sample_size 10 exceeds sample_size 5"),
])
def test_policy_rejects_mistakes(raw, message):
    with pytest.raises(ValueError) as err:
        DriftPolicy.from_dict(raw, where="d.yaml")
    assert message in str(err.value)
    if "explicit" not in raw:
        with pytest.raises(ValueError):  # built in code, the same checks apply
            DriftPolicy(**raw)


# ---------------------------------------------------------------------------- trigger log


def test_record_and_load_triggers(tmp_path):
    path = tmp_path / "drift" / "triggers.jsonl"
    d = Decision(retrain=True, reason="drift: x", drifted_features=["a"], code="drift", drift_detected=True,
                 at=NOW.isoformat())
    e1 = record_trigger(d, model_name="m", model_version=3, dataset="sessions", run_key="run-1", path=path)
    again = record_trigger(d, model_name="m", model_version=3, dataset="sessions", run_key="run-1", path=path)
    assert again == e1 and len(path.read_text().splitlines()) == 1  # a retried task appends nothing
    skip = Decision(retrain=False, reason="cooldown: y", drifted_features=["a"], code="cooldown",
                    drift_detected=True, at=(NOW + dt.timedelta(hours=1)).isoformat())
    record_trigger(skip, model_name="m", model_version=3, dataset="sessions", run_key="run-2", path=path)
    record_trigger(d, model_name="other", model_version=1, dataset="sessions", path=path)
    with path.open("a") as fh:
        fh.write('{"at": "2026-03-01T1')  # torn write of a crashed process
    hist = load_trigger_history(model_name="m", path=path)
    assert [(h["code"], h["retrain"], h["model_version"]) for h in hist] == [("drift", True, "3"),
                                                                            ("cooldown", False, "3")]
    assert len(load_trigger_history(path=path)) == 3
    assert load_trigger_history(path=tmp_path / "missing.jsonl") == []
    # the recorded history drives the next decision
    nxt = decide_retrain(result(FEATURES[:5]), DriftPolicy(), hist, now=NOW + dt.timedelta(hours=3),
                         model_name="m")
    assert nxt.code == "cooldown"
    assert json.loads(path.read_text().splitlines()[0])["drifted_features"] == ["a"]


# ------------------------------------------------------------------------------- sampling


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"i": np.arange(n), "x": rng.normal(size=n), "c": rng.choice(list("abc"), n)})


def test_sample_is_seeded_uniform_and_keeps_order():
    df = _frame(20_000)
    s = sample_for_drift(df, 2_000, seed=5)
    assert len(s) == 2_000 and s["i"].is_unique and s["i"].is_monotonic_increasing
    assert s.equals(sample_for_drift(df, 2_000, seed=5))
    assert not s["i"].equals(sample_for_drift(df, 2_000, seed=6)["i"])
    assert abs(s["i"].mean() - 10_000) < 600  # uniform over rows: mean index ~ N/2 (se ~130)
    assert len(sample_for_drift(df, 50_000, seed=5)) == 20_000  # small frames are used whole


def test_chunked_and_parquet_sampling_give_the_same_rows(tmp_path):
    df = _frame(30_000)
    whole = sample_for_drift(df, 1_000, seed=3)
    chunks = sample_for_drift((df.iloc[i:i + 7_000] for i in range(0, len(df), 7_000)), 1_000, seed=3)
    pd.testing.assert_frame_equal(whole, chunks)
    df.iloc[:12_000].to_parquet(tmp_path / "part-0.parquet", row_group_size=5_000)
    df.iloc[12_000:].to_parquet(tmp_path / "part-1.parquet", row_group_size=5_000)
    from_files = sample_for_drift(tmp_path, 1_000, seed=3, batch_rows=4_096)
    pd.testing.assert_frame_equal(whole, from_files)
    cols = sample_for_drift([tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"], 1_000, seed=3,
                            columns=["x"])
    assert list(cols.columns) == ["x"] and cols["x"].equals(whole["x"])


def test_sampling_streams_arrow_batches_lazily_and_skips_hidden_files(tmp_path):
    import pyarrow as pa

    df = _frame(10_000)
    whole = sample_for_drift(df, 500, seed=9)
    consumed = []

    def batches():
        for i in range(0, len(df), 2_500):
            consumed.append(i)
            yield pa.RecordBatch.from_pandas(df.iloc[i:i + 2_500], preserve_index=False)

    gen = batches()
    assert consumed == []  # nothing read before sampling starts
    pd.testing.assert_frame_equal(sample_for_drift(gen, 500, seed=9), whole)
    assert consumed == [0, 2_500, 5_000, 7_500]
    df.to_parquet(tmp_path / "part-0.parquet")
    df.head(10).to_parquet(tmp_path / ".part-1.parquet.tmp.parquet")  # a writer's temp file
    pd.testing.assert_frame_equal(sample_for_drift(tmp_path, 500, seed=9), whole)


# ---------------------------------------------------------------------------------- labels


def test_join_labels_joins_late_truth_and_scores_it():
    preds = pd.DataFrame({
        "request_id": ["r1", "r2", "r3", "r4", "r5", "r5b"],
        "session_id": ["a", "b", "c", "d", "e", "e"],
        "ts": pd.to_datetime([f"2026-01-01T00:00:0{i}Z" for i in range(6)]),
        "prediction": [0.9, 0.2, 0.7, 0.1, 0.3, 0.8],  # e was re-scored: the later 0.8 counts
    })
    labels = pd.DataFrame({"session_id": ["a", "b", "c", "e", "zz", "d"],
                           "purchased": [1, 0, 0, 1, 1, None]})
    j = join_labels(preds, labels, "session_id")
    assert (j.n_predictions, j.n_labeled) == (5, 4) and j.coverage == pytest.approx(0.8)
    assert dict(zip(j.joined["session_id"], j.joined["prediction"], strict=True))["e"] == 0.8
    # a,e positives (0.9, 0.8) outrank negatives b,c (0.2, 0.7): AUC 1; at 0.5: c is wrong
    assert j.metrics["roc_auc"] == pytest.approx(1.0)
    assert j.metrics["accuracy"] == pytest.approx(0.75)
    assert j.summary()["n_labeled"] == 4
    anonymous = pd.concat([preds, preds.head(2).assign(session_id=None, request_id="r9")])
    assert join_labels(anonymous, labels, "session_id").n_predictions == 5  # rows without a key can't join
    with pytest.raises(ValueError, match="target"):
        join_labels(preds, labels.assign(other=1), "session_id")


def test_retrain_window_is_a_policy_setting():
    from include.drift import DriftPolicy

    assert DriftPolicy.from_dict({}).retrain_window_days == 0
    assert DriftPolicy.from_dict({"retrain_window_days": 3}).retrain_window_days == 3
    assert DriftPolicy.load("sessions").retrain_window_days == 0


def test_unset_minimum_samples_scale_with_the_reference_with_a_floor(tmp_path):
    from include.drift import SCALED_FLOOR, DriftPolicy

    default = DriftPolicy()
    assert default.scaled_to(50_000).min_sample_size == 500  # big data: the documented default
    small = default.scaled_to(2_000)
    assert (small.min_sample_size, small.min_labeled) == (200, 400)  # 10% / 20% of what was seen
    tiny = default.scaled_to(300)
    assert tiny.min_sample_size == tiny.min_labeled == SCALED_FLOOR
    # what a policy file sets is kept, whatever the data size
    (tmp_path / "drift_toy.yaml").write_text("min_sample_size: 800\nsample_size: 1000\n")
    chosen = DriftPolicy.load("toy", tmp_path).scaled_to(300)
    assert chosen.min_sample_size == 800 and chosen.min_labeled == SCALED_FLOOR
    assert "explicit" not in chosen.to_dict()
