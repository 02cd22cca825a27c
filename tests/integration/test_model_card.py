"""The model card a gate writes for a version (real MLflow on SQLite via the `state` fixture): it
names the version's data revision, its recorded metrics and the gate's decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.demo_data import make_batch
from include.gate import evaluate_and_decide
from include.spec import load_spec
from include.training.train import train_and_register
from tests.services import SESSIONS_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_gate_logs_a_model_card_with_rev_metrics_and_decision(state):
    import mlflow
    import pandas as pd

    from include.tracking import client
    from include.versioning import DataRepo

    batch = make_batch(0, 400)
    dv = DataRepo().commit_batch("sessions", batch, batch_md5="md5-card-1", batch_name="day-0",
                                 validation_id="val-card-1")
    lineage = {"data_rev": dv.dvc_rev, "data_md5": dv.md5, "validation_id": "val-card-1",
               "dataset": "sessions", "dag_run_id": "manual__card", "trigger_user": "alice"}
    v = train_and_register(batch, load_spec("sessions"), lineage=lineage, family="logreg", run_key="card-1")
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
    assert dv.dvc_rev in md and dv.md5 in md and "val-card-1" in md
    ts = pd.to_datetime(batch["ts"], utc=True)
    assert f"- time range: `ts` from {ts.min().isoformat()} to {ts.max().isoformat()}" in md
    assert f"| roc_auc | {auc:.4f} |" in md
    assert f"- **{g['decision']}**" in md and g["reasons"][0] in md
    assert "device" in md  # the spec's slice: per-slice metrics and the feature table
    assert "trigger_user: alice" in md
    assert "Known limitations" in md and "no champion to compare with" in md
    assert "<h1>Model card" in html and dv.dvc_rev in html


def test_model_card_of_a_spec_without_timestamp_says_no_time_range():
    import dataclasses

    from include.model_card import build_card, render_markdown

    spec = dataclasses.replace(load_spec("sessions"), timestamp=None)
    record = {"model": SESSIONS_MODEL, "version": "1", "dataset": "sessions", "decision": "passed"}
    md = render_markdown(build_card(record, spec, {}, {}, {"data_rev": "abc"}, {"rows": 10}))
    assert "- time range: none (the spec has no timestamp column)" in md
