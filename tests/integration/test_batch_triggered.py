"""An Asset-triggered batch_score run on real Airflow (dag.test): the run consumes a `dataset` event
of two datasets and a `deployment` event; only what the batch policies ask for is scored.

dag.test creates a manual run; the synthetic events are real AssetEvent rows attached to that run
(as the scheduler attaches the events it consumed), so the tasks read them through Airflow's own
``triggering_asset_events``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from include.assets import DATASET, DEPLOYMENT
from tests.integration.test_batch_score import _champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _attach_events(monkeypatch, events: list[tuple]) -> None:
    import airflow.models.dagrun as dagrun_mod
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    original = dagrun_mod.get_or_create_dagrun

    def with_events(*args, session, **kwargs):
        dr = original(*args, session=session, **kwargs)
        for asset, extra in events:
            model = session.scalar(select(AssetModel).where(AssetModel.name == asset.name))
            event = AssetEvent(asset_id=model.id, extra=extra, source_dag_id="test", source_run_id="synthetic")
            session.add(event)
            dr.consumed_asset_events.append(event)
        session.flush()
        return dr

    monkeypatch.setattr(dagrun_mod, "get_or_create_dagrun", with_events)


def test_a_triggered_run_scores_what_the_policies_ask(airflow_db, state, tmp_path, monkeypatch, caplog):
    from airflow.dag_processing.dagbag import DagBag

    from include.batch import job
    from include.config import PROJECT_ROOT
    from include.versioning import DataRepo

    model = _champion(state)
    rev = DataRepo().lineage("sessions", "latest")["data_rev"]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "batch_sessions.yaml").write_text("on_new_data: true\n")  # new data only; deliveries: no policy
    monkeypatch.setenv("MLOPS_POLICIES_DIR", str(policies))

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("batch_score")
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"  # scheduled now that a policy asks
    _attach_events(monkeypatch, [
        (DATASET, {"dataset": "sessions", "dvc_rev": rev, "rows": 1500}),
        (DATASET, {"dataset": "deliveries", "dvc_rev": "0" * 40, "rows": 10}),
        (DEPLOYMENT, {"dataset": "sessions", "model": model["model"], "version": "99"}),
    ])
    with caplog.at_level(logging.INFO, logger="include.batch.triggers"):
        dr = dag.test()
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert [k for k in states if k[0] == "finalize"] == [("finalize", 0)]  # one dataset scored

    out = Path(state.state_dir) / "batch"
    run_dirs = [p for p in out.glob(f"*/{job.batch_run_id(dr.run_id)}")]
    assert [p.parent.name for p in run_dirs] == ["sessions"]
    manifest = json.loads((run_dirs[0] / "_manifest.json").read_text())
    # the new revision, by the champion: the promotion event did not apply (on_promotion is off)
    assert manifest["data_rev"] == rev and manifest["trigger"] == [f"new revision {rev}"]
    assert manifest["version"] == str(model["version"]) and manifest["scored"] == 1500
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "dataset deliveries" in skipped and "promoted" in skipped, skipped
