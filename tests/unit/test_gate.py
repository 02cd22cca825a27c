"""Gate policy on constructed arrays: every check can fail alone with its reason; no MLflow."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from include.gate import (
    DEFAULT_POLICIES,
    INSUFFICIENT_FRESH,
    STALE_DATA,
    Policy,
    TrainedKeys,
    append_audit,
    bootstrap_deltas,
    check_absolute,
    check_regressions,
    check_significance,
    check_slices,
    decide,
    exclude_trained_rows,
    exclusion_summary,
    load_policy,
    metric_set,
    parse_policy,
    read_audit,
    render_markdown,
    run_checks,
    weighted_metric,
)


def _sig(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def data():
    """A latent signal z; the champion sees it through heavy noise, a better challenger through less."""
    rng = np.random.default_rng(1)
    n = 3000
    z = rng.normal(size=n)
    y = (rng.random(n) < _sig(2 * z - 1.5)).astype(int)
    champ = _sig(z + rng.normal(0, 1.5, n) - 1.5)
    better = _sig(z + rng.normal(0, 0.5, n) - 1.5)
    noise = np.clip(champ + rng.normal(0, 1e-3, n), 0, 1)  # champion + tiny perturbations
    seg = rng.choice(["a", "b", "c"], n, p=[0.45, 0.4, 0.15])
    return {"y": y, "z": z, "champ": champ, "better": better, "noise": noise, "slices": {"seg": seg}, "rng": rng}


def _failed(checks):
    return [c["name"] for c in checks if not c["passed"]]


# ------------------------------------------------------------------------------------ vectorized metrics


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy", "f1", "log_loss"])
def test_weighted_classification_metrics_match_sklearn(metric):
    rng = np.random.default_rng(0)
    n = 500
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.random(n) * 0.6 + 0.3 * y, 2)  # rounded: many ties
    w = rng.integers(0, 4, size=(5, n)).astype(float)
    ref = {
        "roc_auc": lambda wi: roc_auc_score(y, s, sample_weight=wi),
        "accuracy": lambda wi: accuracy_score(y, s >= 0.5, sample_weight=wi),
        "f1": lambda wi: f1_score(y, s >= 0.5, sample_weight=wi),
        "log_loss": lambda wi: log_loss(y, s, sample_weight=wi),
    }[metric]
    np.testing.assert_allclose(weighted_metric(y, s, w, metric), [ref(wi) for wi in w], rtol=1e-10)


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_weighted_regression_metrics_match_sklearn(metric):
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    p = y + rng.normal(0, 0.5, 300)
    w = rng.integers(0, 4, size=(4, 300)).astype(float)
    ref = {
        "rmse": lambda wi: np.sqrt(mean_squared_error(y, p, sample_weight=wi)),
        "mae": lambda wi: mean_absolute_error(y, p, sample_weight=wi),
        "r2": lambda wi: r2_score(y, p, sample_weight=wi),
    }[metric]
    np.testing.assert_allclose(weighted_metric(y, p, w, metric), [ref(wi) for wi in w], rtol=1e-10)


def test_bootstrap_is_seeded_and_paired(data):
    y, champ = data["y"], data["champ"]
    a = bootstrap_deltas(y, champ, data["better"], "roc_auc", n_boot=300, seed=3)
    b = bootstrap_deltas(y, champ, data["better"], "roc_auc", n_boot=300, seed=3, chunk_cells=10_000)
    np.testing.assert_allclose(a, b)  # chunking does not change the samples
    assert a.shape == (300,) and (a > 0).all()
    # paired: the same model against itself differs by exactly zero in every replicate
    assert not bootstrap_deltas(y, champ, champ, "roc_auc", n_boot=200, seed=0).any()
    # oriented for lower-is-better metrics: a better challenger gives positive deltas
    assert bootstrap_deltas(y, champ, data["better"], "log_loss", n_boot=200, seed=0).mean() > 0


def test_bootstrap_rejects_mismatched_lengths(data):
    with pytest.raises(ValueError, match="same non-zero length"):
        bootstrap_deltas(data["y"], data["champ"][:-1], data["better"], "roc_auc")


# ------------------------------------------------------------------------------------------- checks


def test_clearly_better_challenger_passes_everything(data):
    checks = run_checks(data["y"], data["better"], data["champ"], data["slices"], Policy())
    assert _failed(checks) == []
    sig = next(c for c in checks if c["name"] == "significance:roc_auc")
    assert sig["value"] > 0.1 and sig["ci_lower"] > 0.05 and sig["n_boot"] == 1000
    assert decide(checks) == ("passed", [f"all {len(checks)} checks passed"])


def test_noise_only_challenger_is_rejected_by_significance_alone(data):
    checks = run_checks(data["y"], data["noise"], data["champ"], data["slices"], Policy())
    assert _failed(checks) == ["significance:roc_auc"]
    decision, reasons = decide(checks)
    assert decision == "rejected"
    assert reasons[0].startswith("improvement in roc_auc not significant")


def test_slice_regression_fails_alone(data):
    y, z, rng = data["y"], data["z"], data["rng"]
    chall = data["better"].copy()
    m = data["slices"]["seg"] == "c"
    chall[m] = _sig(-z[m] + rng.normal(0, 0.5, m.sum()) - 1.5)  # anti-correlated on slice c only
    checks = run_checks(y, chall, data["champ"], data["slices"], Policy())
    assert _failed(checks) == ["slice:seg=c"]
    (reason,) = decide(checks)[1]
    assert "roc_auc on seg=c dropped by" in reason and "> allowed 0.05" in reason


def test_small_slices_are_skipped(data):
    checks = check_slices(data["y"], data["champ"], data["noise"], data["slices"], replace(Policy(), slice_min_size=1000))
    by_name = {c["name"]: c for c in checks}
    assert by_name["slice:seg=c"]["skipped"] and by_name["slice:seg=c"]["passed"]
    assert "min size 1000" in by_name["slice:seg=c"]["reason"]
    assert not by_name["slice:seg=a"]["skipped"]


def test_absolute_minimum_fails_alone():
    checks = check_absolute({"roc_auc": 0.55, "accuracy": 0.9}, Policy())
    assert [(c["name"], c["passed"]) for c in checks] == [("minimum:roc_auc", False)]
    assert "0.5500 fails the absolute limit >= 0.6" in checks[0]["reason"]
    ceiling = check_absolute({"log_loss": 0.7}, replace(Policy(), absolute={"log_loss": 0.5}))
    assert not ceiling[0]["passed"] and "<= 0.5" in ceiling[0]["reason"]


def test_secondary_regression_fails_alone():
    champ = {"roc_auc": 0.80, "accuracy": 0.85, "f1": 0.5, "log_loss": 0.40}
    worse_acc = {**champ, "roc_auc": 0.82, "accuracy": 0.82}
    checks = check_regressions(worse_acc, champ, Policy())
    assert _failed(checks) == ["no_regression:accuracy"]
    assert "accuracy regressed" in checks[0]["reason"] and "allowed 0.02" in checks[0]["reason"]
    # log_loss is lower-is-better: a rise beyond 0.02 fails, a drop passes
    assert _failed(check_regressions({**champ, "log_loss": 0.43}, champ, Policy())) == ["no_regression:log_loss"]
    assert _failed(check_regressions({**champ, "log_loss": 0.30}, champ, Policy())) == []


def test_absolute_failure_through_run_checks(data):
    """A challenger that is significantly better but still below the floor fails only the floor."""
    policy = replace(Policy(), absolute={"roc_auc": 0.9})
    checks = run_checks(data["y"], data["better"], data["champ"], data["slices"], policy)
    assert _failed(checks) == ["minimum:roc_auc"]


def test_first_model_only_absolute_minimums(data):
    checks = run_checks(data["y"], data["champ"], None, data["slices"], Policy())
    assert [c["name"] for c in checks] == ["minimum:roc_auc"]


def test_significance_threshold_is_min_improvement(data):
    c = check_significance(data["y"], data["champ"], data["better"], replace(Policy(), min_improvement=0.5))
    assert not c["passed"] and c["threshold"] == 0.5 and c["ci_lower"] < 0.5


def test_regression_task_policy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=800)
    champ = y + rng.normal(0, 1.0, 800)
    chall = y + rng.normal(0, 0.5, 800)
    policy = DEFAULT_POLICIES["regression"]
    checks = run_checks(y, chall, champ, {}, policy)
    assert _failed(checks) == []
    assert {c["name"] for c in checks} == {"minimum:r2", "no_regression:r2", "significance:rmse"}
    assert _failed(run_checks(y, champ, chall, {}, policy)) == ["no_regression:r2", "significance:rmse"]


# ------------------------------------------------------------------------------------------ override


def test_override_requires_justification(data):
    checks = run_checks(data["y"], data["noise"], data["champ"], data["slices"], Policy())
    for bad in ({"approve": True}, {"approve": True, "justification": "  "}, {"justification": "x"},
                {"approve": "yes", "justification": "x"}):
        with pytest.raises(ValueError, match="override"):
            decide(checks, bad)
    decision, reasons = decide(checks, {"approve": True, "justification": "hotfix for a broken slice", "by": "ana"})
    assert decision == "passed"
    assert reasons[0].startswith("override by ana: passed (hotfix for a broken slice); the checks alone gave rejected")
    good = run_checks(data["y"], data["better"], data["champ"], data["slices"], Policy())
    assert decide(good, {"approve": False, "justification": "legal hold"})[0] == "rejected"


# -------------------------------------------------------------------------------------------- policy


def test_policy_defaults_and_yaml(tmp_path):
    assert load_policy("nope", "classification", tmp_path) == DEFAULT_POLICIES["classification"]
    (tmp_path / "ds.yaml").write_text(
        "absolute: {roc_auc: 0.7}\nslices: {max_drop: 0.1, min_size: 50}\nsignificance: {n_boot: 200, confidence: 0.9}\n"
    )
    p = load_policy("ds", "classification", tmp_path)
    assert (p.absolute, p.slice_max_drop, p.slice_min_size, p.n_boot, p.confidence) == ({"roc_auc": 0.7}, 0.1, 50, 200, 0.9)
    assert p.max_regression == {"accuracy": 0.02, "log_loss": 0.02} and p.source.endswith("ds.yaml")


def test_shipped_sessions_policy_loads():
    p = load_policy("sessions", "classification")
    assert p.primary_metric == "roc_auc" and p.source.endswith("sessions.yaml")


@pytest.mark.parametrize("raw, message", [
    ({"absolut": {}}, "x.yaml: unknown key 'absolut' (known: ['absolute', "),
    ({"absolute": {"rmse": 1.0}}, "x.yaml: metric(s) ['rmse'] are not classification metrics"),
    ({"slices": {"size": 3}}, "x.yaml: unknown key 'slices.size' (known: ['max_drop', 'metric', 'min_size'])"),
    ({"significance": {"confidence": 1.5}}, "x.yaml: significance.confidence: Input should be less than 1, got 1.5"),
    ({"significance": {"n_boot": 10}}, "significance.n_boot: Input should be greater than or equal to 100, got 10"),
    ({"max_regression": {"accuracy": -0.1}}, "max_regression.accuracy: Input should be greater than or equal to 0"),
    ({"slices": {"max_drop": -1}}, "slices.max_drop: Input should be greater than or equal to 0, got -1"),
    ({"min_fresh_holdout": 0}, "min_fresh_holdout: Input should be greater than or equal to 1, got 0"),
    ({"min_fresh_holdout": 12.5}, "min_fresh_holdout: Input should be a valid integer, got 12.5"),
    ({"min_fresh_holdout": True}, "min_fresh_holdout: Input should be a valid integer, got True"),
    ([1, 2], "x.yaml: a policy must be a mapping"),
])
def test_bad_policy_files_fail_clearly(raw, message):
    with pytest.raises(ValueError) as err:
        parse_policy(raw, "classification", source="x.yaml")
    assert message in str(err.value)


# -------------------------------------------------------------------------------------------- records


def test_audit_append_is_deduplicated(tmp_path):
    path = tmp_path / "reports" / "audit.jsonl"
    assert append_audit({"decision_id": "a", "decision": "passed"}, path)
    assert not append_audit({"decision_id": "a", "decision": "passed"}, path)
    assert append_audit({"decision_id": "b", "decision": "rejected"}, path)
    assert [r["decision_id"] for r in read_audit(path)] == ["a", "b"]


def test_markdown_lists_every_check(data):
    checks = run_checks(data["y"], data["noise"], data["champ"], data["slices"], Policy())
    decision, reasons = decide(checks)
    metrics = metric_set(data["y"], data["noise"], "classification")
    record = json.loads(json.dumps({
        "model": "m", "version": "2", "decision": decision, "reasons": reasons, "decided_at": "now",
        "dataset": "d", "holdout": {"n_rows": 3000, "uri": "runs:/r/holdout/holdout.parquet"},
        "challenger": {"version": "2", "run_id": "r", "metrics": metrics},
        "champion": {"version": "1", "run_id": "q", "metrics": metrics}, "checks": checks,
        "policy": {"source": "defaults"}, "trigger": {"reason": "drift"}, "override": None,
    }, default=str))
    md = render_markdown(record)
    assert "REJECTED" in md and all(c["name"] in md for c in checks) and "| significance:roc_auc | FAIL |" in md


# ------------------------------------------------------------------------------------- unseen rows


def test_min_fresh_holdout_default_scales_down_for_small_holdouts_and_a_policy_fixes_it():
    p = Policy()
    assert (p.fresh_minimum(1800), p.fresh_minimum(300), p.fresh_minimum(1)) == (200, 150, 1)
    fixed = parse_policy({"min_fresh_holdout": 500}, "classification", source="x.yaml")
    assert (fixed.fresh_minimum(1800), fixed.fresh_minimum(300)) == (500, 500)


def test_rows_any_model_trained_on_are_excluded_and_counted_per_model():
    import pandas as pd

    holdout = pd.DataFrame({"id": [1, 2, 3, 4, 5, 6], "x": range(6)})
    trained = [
        TrainedKeys("challenger v2", "2", frozenset(), "artifact", "runs:/a/lineage/training_keys.parquet"),
        TrainedKeys("champion v1", "1", frozenset({"2", "3", "9"}), "rebuilt", "rebuilt from its recipe"),
        TrainedKeys("older v0", "0", frozenset({"3", "5"}), "artifact", "runs:/b/..."),
    ]
    fresh, rec = exclude_trained_rows(holdout, "id", trained)
    assert fresh["id"].tolist() == [1, 4, 6]  # keys compare as text: int 2 is "2"
    assert (rec["n_rows"], rec["n_fresh"], rec["n_excluded"]) == (6, 3, 3)
    assert [(e["model"], e["n_excluded"], e["n_trained"]) for e in rec["exclusions"]] == [
        ("challenger v2", 0, 0), ("champion v1", 2, 3), ("older v0", 2, 2)]
    assert rec["notes"] == []
    assert exclusion_summary(rec) == ("3 of 6 holdout rows unseen by every model compared; excluded 3: "
                                      "2 that champion v1 trained on (rebuilt), 2 that older v0 trained on (artifact)")


def test_unknown_training_rows_exclude_nothing_and_say_so():
    import pandas as pd

    holdout = pd.DataFrame({"id": ["a", "b"]})
    unknown = TrainedKeys("champion v1", "1", None, "unknown", "no keys artifact and no data_rev to rebuild them from")
    fresh, rec = exclude_trained_rows(holdout, "id", [unknown])
    assert len(fresh) == 2 and rec["exclusions"][0]["n_trained"] is None
    assert rec["notes"] == ["champion v1's training rows are unknown (no keys artifact and no data_rev to rebuild "
                            "them from): none excluded for it, so the comparison may favour it on rows it memorised"]


@pytest.mark.parametrize("blocked", [STALE_DATA, INSUFFICIENT_FRESH])
def test_a_gate_that_cannot_compare_fairly_is_neither_passed_nor_rejected_unless_overridden(data, blocked):
    checks = run_checks(data["y"], data["better"], data["champ"], data["slices"], Policy())
    assert decide(checks)[0] == "passed"
    assert decide([], None, (blocked, ["why"])) == (blocked, ["why"])
    forced, reasons = decide([], {"approve": True, "justification": "ship it", "by": "ana"}, (blocked, ["why"]))
    assert forced == "passed" and reasons == [f"override by ana: passed (ship it); the checks alone gave {blocked}",
                                              "why"]


def test_markdown_states_the_rows_left_and_why(data):
    holdout = {"n_rows": 1000, "n_fresh": 617, "n_excluded": 383, "min_fresh": 200, "uri": "runs:/r/h",
               "exclusions": [{"model": "champion v1", "version": "1", "source": "artifact", "detail": "runs:/q/k",
                               "n_trained": 3200, "n_excluded": 383}], "notes": []}
    record = {"model": "m", "version": "2", "decision": STALE_DATA, "reasons": ["stale"], "decided_at": "now",
              "dataset": "d", "holdout": holdout, "challenger": {"version": "2", "run_id": "r", "metrics": {}},
              "champion": {"version": "1", "run_id": "q", "metrics": {}}, "checks": [],
              "stale_data": {"relation": "older", "detail": "challenger data rev a is an ancestor", "allowed": False},
              "policy": {"source": "defaults"}, "trigger": {}, "override": None}
    md = render_markdown(record)
    assert "STALE DATA" in md and "617 of 1000 holdout rows unseen" in md and "383 that champion v1 trained on" in md
    assert "data revisions: older: challenger data rev a is an ancestor" in md
