"""The gate compares challenger and champion only on rows neither trained on (real MLflow on SQLite,
real DVC data repo): issue 21.

The dataset is the demo's sessions without their timestamp (`visits`), so every split is a seeded
shuffle and a challenger's holdout on a newer revision holds rows of the older one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from include.config import PROJECT_ROOT
from include.demo_data import make_batch
from include.gate import evaluate_and_decide, metric_set, read_audit, run_checks
from include.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "visits_model"
# literals, not the gate's constants: the test must also run (and fail for its reason) on the old gate
STALE_DATA, INSUFFICIENT_FRESH = "stale data", "insufficient fresh holdout"
# Leaves of one row and no shrinkage: memorises its training rows, generalises worse than the default.
OVERFIT = {"learning_rate": 0.1, "max_iter": 300, "max_leaf_nodes": None, "min_samples_leaf": 1,
           "l2_regularization": 0.0}


@pytest.fixture
def visits(state, tmp_path, monkeypatch):
    """A `visits` spec (sessions without `ts`) and a data repo with two revisions of it:
    rev1 = day 0 (4,000 rows), rev2 = rev1 + day 1 (1,000 rows)."""
    from include.versioning import DataRepo

    raw = yaml.safe_load((PROJECT_ROOT / "include" / "specs" / "sessions.yaml").read_text())
    raw.pop("timestamp")
    raw["columns"].pop("ts")
    raw.update(name="visits", model_name=MODEL)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "visits.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLOPS_SPECS_DIR", str(specs))
    repo = DataRepo()
    revs = []
    for day, n in ((0, 4000), (1, 1000)):
        v = repo.commit_batch("visits", make_batch(day, n).drop(columns="ts"), batch_md5=f"md5-visits-{day}",
                              batch_name=f"day-{day}", validation_id=f"val-{day}")
        revs.append(v)
    return load_spec("visits"), revs


def _train(spec, version, *, family="hgb", params=None, run_key: str) -> dict:
    """What the train DAG's `fit` does: the dataset exactly as of the revision, then train."""
    from include.training.train import train_and_register
    from include.versioning import DataRepo

    lineage = {"data_rev": version.dvc_rev, "data_md5": version.md5, "validation_id": version.validation_id,
               "dataset": "visits", "dag_run_id": run_key}
    return train_and_register(DataRepo().load("visits", version.dvc_rev, spec), spec, lineage=lineage,
                              family=family, params=params, run_key=run_key)


def _record(uri: str) -> dict:
    import mlflow

    return json.loads(Path(mlflow.artifacts.download_artifacts(uri)).read_text())


def _crown(version: str) -> None:
    from include.tracking import client

    client().set_registered_model_alias(MODEL, "champion", version)  # what `deploy` does after the switch


def _shared_holdout_comparison(spec, challenger: dict, champion: dict) -> dict:
    """What the gate did before issue 21: both models on the challenger's WHOLE holdout."""
    import mlflow

    from include.gate import DEFAULT_POLICIES
    from include.training.metrics import predict_scores, target_array
    from include.training.model_io import load_model

    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(challenger["holdout_uri"]))
    chall, champ = load_model(MODEL, challenger["version"]), load_model(MODEL, champion["version"])
    y = target_array(holdout, spec, chall)
    s_chall, s_champ = predict_scores(chall, holdout, spec), predict_scores(champ, holdout, spec)
    checks = run_checks(y, s_chall, s_champ, {c: holdout[c].to_numpy() for c in spec.slices},
                        DEFAULT_POLICIES["classification"])
    return {"n": len(holdout), "challenger": metric_set(y, s_chall, "classification"),
            "champion": metric_set(y, s_champ, "classification"),
            "failed": [c["name"] for c in checks if not c["passed"]]}


@pytest.mark.parametrize("champion_keys", ["artifact", "rebuilt", "unknown"])
def test_an_overfit_champion_is_judged_only_on_rows_it_never_saw(visits, monkeypatch, champion_keys):
    import mlflow

    import include.training.train as training
    from include.versioning import DataRepo

    spec, (rev1, rev2) = visits
    # "rebuilt"/"unknown": a champion trained before training keys were logged; "unknown" also
    # has no data rev the data repo knows, so its recipe cannot be re-run
    with monkeypatch.context() as m:
        if champion_keys != "artifact":
            m.setattr(training, "_log_training_keys", lambda *a, **k: None)
        if champion_keys == "unknown":
            v1 = training.train_and_register(
                DataRepo().load("visits", rev1.dvc_rev, spec), spec,
                lineage={"data_rev": "not-in-the-repo", "dataset": "visits"}, family="hgb", params=OVERFIT,
                run_key="overfit")
        else:
            v1 = _train(spec, rev1, params=OVERFIT, run_key="overfit")
    assert evaluate_and_decide(MODEL, v1["version"], dataset="visits")["decision"] == "passed"
    _crown(v1["version"])
    assert v1["metrics"]["train_roc_auc"] > 0.99  # it memorised its rows

    v2 = _train(spec, rev2, run_key="regularised")
    g2 = evaluate_and_decide(MODEL, v2["version"], dataset="visits", trigger={"reason": "new-data"})
    rec = _record(g2["record_uri"])

    # Before: on the shared holdout the champion wins roc_auc (383 of the 1,000 rows are its own
    # training rows) and the better-generalising challenger is rejected.
    biased = _shared_holdout_comparison(spec, v2, v1)
    assert biased["n"] == 1000
    assert biased["champion"]["roc_auc"] > biased["challenger"]["roc_auc"]
    assert "significance:roc_auc" in biased["failed"]

    if champion_keys == "unknown":
        # nothing known to exclude: the old, biased comparison, and the record says why
        assert g2["decision"] == "rejected"
        h = rec["holdout"]
        champ_ex = h["exclusions"][1]
        assert (h["n_rows"], h["n_fresh"], h["n_excluded"]) == (1000, 1000, 0)
        assert champ_ex["source"] == "unknown" and "could not be re-run" in champ_ex["detail"]
        assert any("training rows are unknown" in r for r in g2["reasons"])
        assert rec["stale_data"]["relation"] == "unknown"
        return

    # After: both scored on the 617 rows neither trained on; the challenger is better there
    assert g2["decision"] == "passed", g2["reasons"]
    h = rec["holdout"]
    (chall_ex, champ_ex) = h["exclusions"]
    assert (h["n_rows"], h["n_fresh"], h["n_excluded"], h["min_fresh"]) == (1000, 617, 383, 200)
    assert (chall_ex["model"], chall_ex["n_excluded"]) == (f"challenger v{v2['version']}", 0)
    assert (champ_ex["model"], champ_ex["n_excluded"], champ_ex["n_trained"]) == ("champion v1", 383, 3200)
    assert champ_ex["source"] == champion_keys
    if champion_keys == "rebuilt":
        assert "reproduces its recorded holdout" in champ_ex["detail"]
    assert h["summary"] == ("617 of 1000 holdout rows unseen by every model compared; excluded 383: "
                            "383 that champion v1 trained on (" + champion_keys + ")")
    assert rec["challenger"]["metrics"]["roc_auc"] > rec["champion"]["metrics"]["roc_auc"]
    sig = next(c for c in rec["checks"] if c["name"] == "significance:roc_auc")
    assert sig["passed"] and sig["n"] == 617
    assert rec["stale_data"] == {"relation": "newer", "allowed": False,
                                 "detail": f"challenger data rev {rev2.dvc_rev[:10]} descends from the champion's "
                                           f"{rev1.dvc_rev[:10]}"}
    md = Path(mlflow.artifacts.download_artifacts(run_id=v2["run_id"], artifact_path="gate/decision.md")).read_text()
    assert "617 of 1000 holdout rows unseen" in md and "Metrics on the 617 unseen holdout rows" in md
    print(f"\n[{champion_keys}] shared holdout (1000 rows): challenger roc_auc {biased['challenger']['roc_auc']:.4f} "
          f"vs champion {biased['champion']['roc_auc']:.4f}, failed {biased['failed']}; unseen rows (617): "
          f"challenger {rec['challenger']['metrics']['roc_auc']:.4f} vs champion "
          f"{rec['champion']['metrics']['roc_auc']:.4f}, ci_lower {sig['ci_lower']:.4f}; "
          f"gate timings {rec['timings_s']}")


def test_a_retrain_on_an_older_rev_is_stale_unless_the_run_allows_it(state, visits):
    from include.tracking import client

    spec, (rev1, rev2) = visits
    c = client()
    v1 = _train(spec, rev2, run_key="current")
    assert evaluate_and_decide(MODEL, v1["version"], dataset="visits")["decision"] == "passed"
    _crown(v1["version"])

    # a reproduction run on the older revision (same seed, same family)
    v2 = _train(spec, rev1, run_key="reproduction")
    g = evaluate_and_decide(MODEL, v2["version"], dataset="visits", trigger={"reason": "reproduce"})
    assert g["decision"] == STALE_DATA
    assert g["reasons"][0].startswith(f"stale data: challenger data rev {rev1.dvc_rev[:10]} is an ancestor of the "
                                      f"champion's {rev2.dvc_rev[:10]}")
    assert str(c.get_model_version_by_alias(MODEL, "challenger").version) == v1["version"]  # not promoted
    tags = c.get_model_version(MODEL, v2["version"]).tags
    assert tags["gate_decision"] == STALE_DATA and "gate_allow_stale_data" not in tags
    rec = _record(g["record_uri"])
    assert rec["checks"] == [] and rec["stale_data"]["relation"] == "older" and not rec["allow_stale_data"]
    # a retry of the same run changes nothing
    assert evaluate_and_decide(MODEL, v2["version"], dataset="visits")["reused"]

    audit = state.reports_dir / "audit.jsonl"
    n_lines = len(read_audit(audit))
    # the run says explicitly to judge it: on the rows of its holdout the champion never saw
    allowed = evaluate_and_decide(MODEL, v2["version"], dataset="visits", trigger={"reason": "reproduce"},
                                  allow_stale_data=True)
    # judged like any challenger: here no better than the champion on those rows
    assert not allowed["reused"] and allowed["decision"] == "rejected"
    assert allowed["reasons"][0].startswith("stale data allowed by the run (allow_stale_data): challenger data rev")
    lines = read_audit(audit)
    assert len(lines) == n_lines + 1
    last = lines[-1]
    assert last["allow_stale_data"] is True and last["stale_data"]["allowed"] is True
    assert last["decision_id"] != rec["decision_id"] and last["decision"] == allowed["decision"]
    h = last["holdout"]
    assert (h["n_rows"], h["n_fresh"], h["n_excluded"]) == (800, 413, 387)
    assert [e["n_excluded"] for e in h["exclusions"]] == [0, 387]
    assert next(ch for ch in last["checks"] if ch["name"] == "significance:roc_auc")["n"] == 413
    assert c.get_model_version(MODEL, v2["version"]).tags["gate_allow_stale_data"] == "true"
    print(f"\nstale challenger judged on {h['n_fresh']} unseen rows: {allowed['decision']} {allowed['reasons']}")


def test_too_few_unseen_rows_is_insufficient_not_judged(visits, tmp_path):
    """A policy that needs more unseen rows than are left: neither passed nor rejected."""
    spec, (rev1, rev2) = visits
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "visits.yaml").write_text("min_fresh_holdout: 700\n")
    v1 = _train(spec, rev1, family="logreg", run_key="first")
    assert evaluate_and_decide(MODEL, v1["version"], dataset="visits", policies_dir=policies)["decision"] == "passed"
    _crown(v1["version"])
    v2 = _train(spec, rev2, family="logreg", run_key="second")
    g = evaluate_and_decide(MODEL, v2["version"], dataset="visits", policies_dir=policies)
    assert g["decision"] == INSUFFICIENT_FRESH
    assert g["reasons"] == ["insufficient fresh holdout: 617 of 1000 holdout rows unseen by every model compared; "
                            "excluded 383: 383 that champion v1 trained on (artifact); the policy needs at least 700 "
                            "(min_fresh_holdout)"]
    rec = _record(g["record_uri"])
    assert rec["checks"] == [] and rec["holdout"]["min_fresh"] == 700
    assert np.isfinite(rec["challenger"]["metrics"]["roc_auc"])  # shown, not judged
    from include.tracking import client

    assert str(client().get_model_version_by_alias(MODEL, "challenger").version) == v1["version"]


def test_the_train_dag_passes_allow_stale_data_to_the_gate_and_the_audit_names_the_run(airflow_db, state, visits):
    from tests.dagrun import run_dag

    spec, (rev1, rev2) = visits
    v1 = _train(spec, rev2, family="logreg", run_key="current")
    evaluate_and_decide(MODEL, v1["version"], dataset="visits")
    _crown(v1["version"])

    dr = run_dag("train", {"dataset": "visits", "data_rev": rev1.dvc_rev, "family": "logreg",
                           "reason": "reproduce", "allow_stale_data": True})
    assert str(dr.state) == "success"
    last = read_audit(state.reports_dir / "audit.jsonl")[-1]
    assert last["version"] == "2" and last["trigger"]["dag_run_id"] == dr.run_id
    assert last["allow_stale_data"] is True and last["stale_data"]["relation"] == "older"
    assert last["decision"] in ("passed", "rejected") and last["holdout"]["n_fresh"] == 413
