"""The gate against a real MLflow registry (SQLite via the `state` fixture): aliases, tags, records, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from include.demo_data import make_batch
from include.gate import evaluate_and_decide, read_audit
from include.spec import load_spec
from include.training.train import train_and_register
from tests.services import SESSIONS_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _lineage(rev: str) -> dict:
    return {"data_rev": rev, "data_md5": f"md5-{rev}", "validation_id": f"val-{rev}", "dataset": "sessions",
            "dag_run_id": f"run-{rev}"}


def _record(uri: str) -> dict:
    import mlflow

    return json.loads(Path(mlflow.artifacts.download_artifacts(uri)).read_text())


def test_gate_sets_aliases_and_records_every_decision(state):
    from include.tracking import client

    spec = load_spec("sessions")
    c = client()
    name = SESSIONS_MODEL
    audit = state.reports_dir / "audit.jsonl"
    trigger = {"reason": "new-data", "dag_run_id": "asset_triggered__1"}

    # 1. first model (small day-0 data, logreg): no champion, only the absolute minimums apply
    v1 = train_and_register(make_batch(0, 400), spec, lineage=_lineage("rev1"), family="logreg", run_key="k1")
    g1 = evaluate_and_decide(name, v1["version"], dataset="sessions", trigger=trigger)
    assert g1["decision"] == "passed" and g1["version"] == "1"
    rec1 = _record(g1["record_uri"])
    assert rec1["champion"] is None and [ch["name"] for ch in rec1["checks"]] == ["minimum:roc_auc"]
    assert str(c.get_model_version_by_alias(name, "challenger").version) == "1"
    c.set_registered_model_alias(name, "champion", v1["version"])  # what `deploy` does after the switch

    # 2. more data, hgb: compared with the champion on the challenger's holdout, clearly better
    big = pd.concat([make_batch(d, 3000) for d in (1, 2, 3)], ignore_index=True)
    v2 = train_and_register(big, spec, lineage=_lineage("rev2"), family="hgb", run_key="k2")
    g2 = evaluate_and_decide(name, v2["version"], dataset="sessions", trigger=trigger)
    assert g2["decision"] == "passed", g2["reasons"]
    assert str(c.get_model_version_by_alias(name, "challenger").version) == v2["version"]
    assert str(c.get_model_version_by_alias(name, "champion").version) == "1"  # the gate never touches it

    rec2 = _record(g2["record_uri"])
    assert rec2["decision"] == "passed" and rec2["trigger"] == trigger
    assert rec2["champion"]["version"] == "1" and rec2["champion"]["data_rev"] == "rev1"
    assert rec2["challenger"]["data_rev"] == "rev2" and rec2["challenger"]["code_sha"]
    # time-based split on new days: no holdout row was the champion's, nothing excluded
    h2 = rec2["holdout"]
    assert (h2["n_rows"], h2["n_fresh"], h2["n_excluded"], h2["min_fresh"]) == (1800, 1800, 0, 200)
    assert [(e["model"], e["source"], e["n_excluded"]) for e in h2["exclusions"]] == [
        ("challenger v2", "artifact", 0), ("champion v1", "artifact", 0)]
    assert rec2["stale_data"]["relation"] == "unknown"  # "rev1"/"rev2" are not in a data repo here
    names = [ch["name"] for ch in rec2["checks"]]
    assert {"minimum:roc_auc", "no_regression:accuracy", "no_regression:log_loss", "significance:roc_auc",
            "slice:device=mobile"} <= set(names)
    sig = next(ch for ch in rec2["checks"] if ch["name"] == "significance:roc_auc")
    assert sig["passed"] and sig["ci_lower"] > 0
    # the audit line is the same record as the artifact; the Markdown sits next to it
    lines = read_audit(audit)
    assert [ln["version"] for ln in lines] == ["1", "2"] and lines[-1] == rec2
    assert "PASSED" in Path(_download(g2["run_id"], "gate/decision.md")).read_text()
    tags = c.get_model_version(name, v2["version"]).tags
    assert tags["gate_decision"] == "passed" and tags["gate_report"] == g2["record_uri"]
    assert json.loads(tags["gate_reasons"]) == g2["reasons"] and tags["gate_champion_version"] == "1"

    # 3. re-running the gate for the same version returns the recorded decision, changes nothing
    again = evaluate_and_decide(name, v2["version"], dataset="sessions", trigger=trigger)
    assert again["reused"] and again["decision"] == "passed" and again["record_uri"] == g2["record_uri"]
    assert len(read_audit(audit)) == 2

    # 4. a challenger identical to the champion is better only by noise (here: not at all): rejected
    c.set_registered_model_alias(name, "champion", v2["version"])
    # (the same recipe as v2: train refuses it unless forced, a deliberate retrain)
    v3 = train_and_register(big, spec, lineage=_lineage("rev2"), family="hgb", run_key="k3", force=True)
    g3 = evaluate_and_decide(name, v3["version"], dataset="sessions", trigger=trigger)
    assert g3["decision"] == "rejected"
    rec3 = _record(g3["record_uri"])
    assert rec3["stale_data"]["relation"] == "same" and rec3["holdout"]["n_fresh"] == 1800
    assert len(g3["reasons"]) == 1 and g3["reasons"][0].startswith("improvement in roc_auc not significant")
    assert str(c.get_model_version_by_alias(name, "challenger").version) == v2["version"]  # unchanged
    tags3 = c.get_model_version(name, v3["version"]).tags
    assert tags3["gate_decision"] == "rejected" and "not significant" in tags3["gate_reasons"]
    assert read_audit(audit)[-1]["decision"] == "rejected" and len(read_audit(audit)) == 3

    # 5. a human override needs a justification; then it forces the pass and says who and why
    with pytest.raises(ValueError, match="justification is required"):
        evaluate_and_decide(name, v3["version"], dataset="sessions", trigger=trigger,
                            override={"approve": True, "justification": ""})
    assert len(read_audit(audit)) == 3
    override = {"approve": True, "justification": "same model, new code sha to ship", "by": "ana"}
    g4 = evaluate_and_decide(name, v3["version"], dataset="sessions", trigger=trigger, override=override)
    assert g4["decision"] == "passed" and g4["reasons"][0].startswith("override by ana: passed")
    assert str(c.get_model_version_by_alias(name, "challenger").version) == v3["version"]
    last = read_audit(audit)[-1]
    assert len(read_audit(audit)) == 4 and last["override"] == override and last["decision"] == "passed"
    assert c.get_model_version(name, v3["version"]).tags["gate_decision"] == "passed"
    # the same override again is a no-op
    assert evaluate_and_decide(name, v3["version"], dataset="sessions", trigger=trigger, override=override)["reused"]
    assert len(read_audit(audit)) == 4


def _download(run_id: str, path: str) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)


def test_gate_refuses_a_version_without_holdout(state):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from include.tracking import configure_mlflow

    exp = configure_mlflow()
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.sklearn.log_model(LogisticRegression().fit(X, [0, 1, 0, 1]), name="model")
    mv = mlflow.register_model(info.model_uri, SESSIONS_MODEL)
    with pytest.raises(ValueError, match="has no holdout/holdout.parquet"):
        evaluate_and_decide(SESSIONS_MODEL, mv.version, dataset="sessions")
    assert read_audit(state.reports_dir / "audit.jsonl") == []
