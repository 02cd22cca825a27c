"""`train` refuses a second version of an identical recipe (real MLflow on SQLite, real git/DVC, dag.test).

Before, a doubly-announced revision or the demo's leftover queued runs registered a second version
of the champion with the same data rev and config: a duplicate the gate then judged against itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch
from tests.services import SESSIONS_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def same_code(monkeypatch):
    """The code identity of this checkout, read once: a shared dev checkout may be edited while the
    test runs, which would (rightly) make every training a new recipe. tests/unit covers its changes."""
    import include.training.train as training

    identity = training.code_identity()
    monkeypatch.setattr(training, "code_identity", lambda: identity)


@pytest.fixture
def ingested(state):
    """One validated batch committed to the data repo; its lineage."""
    from include.ingestion import commit_validated, validate_landed
    from include.versioning import DataRepo

    landed = write_batch(make_batch(0, 800), Path(state.landing) / "sessions" / "day0.csv")
    extra = commit_validated([validate_landed(str(landed), "sessions")], "sessions")
    return DataRepo().lineage("sessions", extra["dvc_rev"])


def _versions() -> list:
    from include.tracking import client

    return sorted(client().search_model_versions(f"name='{SESSIONS_MODEL}'"), key=lambda v: int(v.version))


def test_same_recipe_is_refused_other_recipes_and_force_train(state, ingested):
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow
    from include.training.lineage import RECIPE_TAG
    from include.training.train import train_and_register
    from include.versioning import DataRepo

    spec = load_spec("sessions")
    df = DataRepo().load("sessions", ingested["data_rev"], spec)
    lineage = {**ingested, "dag_run_id": "run-1"}
    first = train_and_register(df, spec, lineage=lineage, family="logreg", run_key="k1")
    assert not first["reused"] and "duplicate_of" not in first

    # another run (another run key, another reason) on the same rev with the same config: refused
    again = train_and_register(df, spec, lineage={**lineage, "dag_run_id": "run-2"}, family="logreg",
                               reason="announced twice", run_key="k2")
    assert again["duplicate_of"] == first["version"] == again["version"] and again["reused"]
    assert again["message"].startswith(f"nothing new to train: v{first['version']} already has this recipe "
                                       f"(data rev {ingested['data_rev'][:12]}, code ")
    exp = configure_mlflow()
    assert len(_versions()) == 1
    assert len(client().search_runs([exp], "tags.run_key = 'k2'")) == 0  # nothing logged either

    # a different seed, window or family is another recipe: trained
    seeded = train_and_register(df, spec, lineage=lineage, family="logreg", seed=7, run_key="k3")
    windowed = train_and_register(df, spec, lineage={**lineage, "selection_window_days": 1}, family="logreg",
                                  run_key="k4")
    assert len({first["version"], seeded["version"], windowed["version"]}) == 3
    # force: a deliberate retrain of the same recipe registers a new version, marked as forced
    forced = train_and_register(df, spec, lineage=lineage, family="logreg", run_key="k5", force=True)
    assert "duplicate_of" not in forced and forced["version"] not in (first["version"], seeded["version"])
    tags = {str(v.version): v.tags for v in _versions()}
    assert tags[forced["version"]][RECIPE_TAG] == tags[first["version"]][RECIPE_TAG]
    assert tags[forced["version"]]["forced"] == "true"
    assert len(_versions()) == 4


def test_train_dag_skips_the_gate_of_a_duplicate_and_force_overrides(airflow_db, state, ingested, capsys):
    from airflow.dag_processing.dagbag import DagBag

    from include.config import PROJECT_ROOT

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("train")
    conf = {"dataset": "sessions", "family": "logreg", "reason": "test"}

    def run(**extra):
        dr = dag.test(run_conf={**conf, **extra})
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        return dr, states

    dr1, s1 = run()
    assert str(dr1.state) == "success" and s1["gate"] == "success", s1
    assert len(_versions()) == 1 and _candidate_events(dr1.run_id) == 1

    # the same revision announced again (or a leftover queued run): nothing new, run succeeds
    dr2, s2 = run(reason="announced twice")
    assert str(dr2.state) == "success" and s2 == {"resolve_data": "success", "fit": "success", "gate": "skipped"}, s2
    out = capsys.readouterr().out
    assert "nothing new to train: v1 already has this recipe" in out
    assert len(_versions()) == 1
    assert _candidate_events(dr2.run_id) == 0  # no model_candidate: deploy is not scheduled

    dr3, s3 = run(force=True)
    assert str(dr3.state) == "success" and s3["fit"] == "success" and s3["gate"] != "skipped", s3
    assert [v.tags.get("dag_run_id") for v in _versions()] == [dr1.run_id, dr3.run_id]


def _candidate_events(run_id: str) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from include.assets import MODEL_CANDIDATE

    with create_session() as session:
        return (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri == MODEL_CANDIDATE.uri, AssetEvent.source_run_id == run_id).count())
