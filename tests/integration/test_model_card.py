"""The model card a gate writes for a version (real MLflow on SQLite via the `state` fixture): it
names the version's data revision, its recorded metrics and the gate's decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.demo_data import make_batch
from include.gate import evaluate_and_decide
from include.spec import load_spec
from include.training import train_and_register
from tests.services import SESSIONS_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_gate_logs_a_model_card_with_rev_metrics_and_decision(state):
    import mlflow

    from include.tracking import client

    lineage = {"data_rev": "rev-card-1", "data_md5": "md5-card-1", "validation_id": "val-card-1",
               "dataset": "sessions", "dag_run_id": "manual__card", "trigger_user": "alice"}
    v = train_and_register(make_batch(0, 400), load_spec("sessions"), lineage=lineage, family="logreg",
                           run_key="card-1")
    g = evaluate_and_decide(SESSIONS_MODEL, v["version"], dataset="sessions",
                            trigger={"dag_run_id": "manual__card", "user": "alice", "reason": "card test"})
    mv = client().get_model_version(SESSIONS_MODEL, v["version"])
    assert mv.tags["model_card"] == f"runs:/{mv.run_id}/model_card/model_card.md"
    assert mv.tags["trigger_user"] == "alice"
    md = Path(mlflow.artifacts.download_artifacts(mv.tags["model_card"])).read_text()
    html = Path(mlflow.artifacts.download_artifacts(f"runs:/{mv.run_id}/model_card/model_card.html")).read_text()
    run = client().get_run(mv.run_id)
    auc = run.data.metrics["test_roc_auc"]
    assert f"# Model card: {SESSIONS_MODEL} v{v['version']}" in md
    assert "rev-card-1" in md and "md5-card-1" in md
    assert f"| roc_auc | {auc:.4f} |" in md
    assert f"- **{g['decision']}**" in md and g["reasons"][0] in md
    assert "device" in md  # the spec's slice: per-slice metrics and the feature table
    assert "trigger_user: alice" in md
    assert "Known limitations" in md and "no champion to compare with" in md
    assert "<h1>Model card" in html and "rev-card-1" in html
