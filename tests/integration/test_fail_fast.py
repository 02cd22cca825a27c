"""Errors no retry can fix fail the task on its first try, with the cause (real Airflow, dag.test).

Before, each of these was retried twice (minutes of back-off) and then failed the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch
from tests.dagrun import run_dag

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(dag_id: str, conf: dict):
    dr = run_dag(dag_id, conf)
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def _failed_at_once(ti) -> None:
    # AirflowFailException: straight to failed, no up_for_retry, so the first try is the last
    assert str(ti.state) == "failed", ti.state
    assert ti.try_number == 1, f"{ti.task_id} was tried {ti.try_number} times"


@pytest.fixture
def one_batch(state):
    from include.ingestion import commit_validated, validate_landed

    landed = write_batch(make_batch(0, 800), Path(state.landing) / "sessions" / "day0.csv")
    commit_validated([validate_landed(str(landed), "sessions")], "sessions")
    return state


def test_a_data_rev_that_does_not_exist_fails_train_at_once(airflow_db, one_batch, capsys):
    dr, tis = _run("train", {"dataset": "sessions", "data_rev": "0123456789abcdef", "reason": "test"})
    assert str(dr.state) == "failed"
    _failed_at_once(tis["resolve_data"])
    assert "data rev '0123456789abcdef' does not exist" in capsys.readouterr().out


def test_an_unknown_dataset_or_nothing_to_train_fails_at_once(airflow_db, state, capsys):
    from airflow.sdk.exceptions import ParamValidationError

    # the form's choices are the specs: an unknown name is refused before any run exists
    with pytest.raises(ParamValidationError, match="'no_such_data' is not one of"):
        _run("train", {"dataset": "no_such_data", "reason": "test"})
    # the form's defaults name no dataset: every dataset with data trains; with none ingested yet
    # the run says so at once
    dr, tis = _run("train", {"reason": "test"})
    _failed_at_once(tis["resolve_data"])
    assert "no dataset has data to train on yet" in capsys.readouterr().out
    # a data rev without a dataset is ambiguous among several specs (sessions, deliveries)
    dr, tis = _run("train", {"reason": "test", "data_rev": "0123456789abcdef"})
    _failed_at_once(tis["resolve_data"])
    assert "say which dataset" in capsys.readouterr().out


def test_a_family_the_task_cannot_use_fails_fit_at_once(airflow_db, one_batch, capsys):
    dr, tis = _run("train", {"dataset": "sessions", "family": "ridge", "reason": "test"})  # ridge: regression
    _failed_at_once(tis["fit"])
    assert "unknown model family 'ridge' for a classification task" in capsys.readouterr().out


def test_override_without_justification_fails_before_training(airflow_db, one_batch, capsys):
    dr, tis = _run("train", {"dataset": "sessions", "override_approve": True, "reason": "test"})
    _failed_at_once(tis["resolve_data"])
    assert "fit" not in tis or str(tis["fit"].state) != "success"
    assert "needs a justification" in capsys.readouterr().out


def test_deploy_of_a_model_no_spec_owns_fails_at_once(airflow_db, state, capsys):
    dr, tis = _run("deploy", {"model": None, "dataset": None, "version": "abc"})
    _failed_at_once(tis["resolve_candidates"])  # several datasets, none named
    dr, tis = _run("deploy", {"dataset": "sessions", "version": "challenger"})
    _failed_at_once(tis["resolve_candidates"])  # no registered model / alias yet
    out = capsys.readouterr().out
    assert "say which dataset" in out and "has no version with alias 'challenger'" in out
    # the form's defaults: every dataset's challenger, and there is none yet: nothing to do, no failure
    dr, tis = _run("deploy", {})
    assert str(dr.state) == "success" and str(tis["resolve_candidates"].state) == "success"
    assert "has no challenger version: nothing to deploy for it" in capsys.readouterr().out
