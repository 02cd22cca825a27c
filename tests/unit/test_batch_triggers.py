"""Scheduled batch scoring is opt-in per dataset: the policy file, the DAG's schedule, and which
datasets an Asset-triggered run scores."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from include.assets import DATASET, DEPLOYMENT
from include.batch import triggers


@dataclass
class _Event:  # what a run's triggering_asset_events hold: extra and timestamp are what is read
    extra: dict
    timestamp: datetime


def _events(**by_asset) -> dict:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return {asset: [_Event(e, t0 + timedelta(minutes=i)) for i, e in enumerate(extras)]
            for asset, extras in ((DATASET, by_asset.get("data", [])), (DEPLOYMENT, by_asset.get("deploy", [])))}


@pytest.fixture
def policies(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_POLICIES_DIR", str(tmp_path))
    return tmp_path


def test_without_a_policy_nothing_is_scheduled(policies):
    assert triggers.load_policy("sessions") == triggers.BatchPolicy()
    assert triggers.schedule(["sessions", "deliveries"]) is None
    # the shipped policies opt no dataset in
    from include.catalog import dataset_names
    from include.config import PROJECT_ROOT

    assert triggers.schedule(dataset_names(), PROJECT_ROOT / "include" / "policies") is None


def test_the_schedule_is_the_assets_some_policy_wants(policies):
    (policies / "batch_sessions.yaml").write_text("on_new_data: true\n")
    assert triggers.schedule(["sessions", "deliveries"]) == DATASET
    (policies / "batch_deliveries.yaml").write_text("batch:\n  on_promotion: true\n")  # the `batch:` form
    assert triggers.schedule(["sessions", "deliveries"]) == (DATASET | DEPLOYMENT)


def test_a_triggered_run_scores_only_what_each_policy_asks(policies, caplog):
    (policies / "batch_sessions.yaml").write_text("on_new_data: true\non_promotion: true\nchunk_rows: 5000\n")
    (policies / "batch_deliveries.yaml").write_text("on_new_data: true\nsource: latest\n")
    events = _events(
        data=[{"dataset": "sessions", "dvc_rev": "aaa"}, {"dataset": "sessions", "dvc_rev": "bbb"},
              {"dataset": "deliveries", "dvc_rev": "ccc"}, {"dataset": "churn", "dvc_rev": "ddd"}],
        deploy=[{"dataset": "sessions", "model": "sessions_purchase", "version": "7"},
                {"dataset": "deliveries", "model": "deliveries_eta", "version": "3"}])
    with caplog.at_level(logging.INFO, logger="include.batch.triggers"):
        jobs = triggers.requested({"dataset": None, "source": "latest"}, events)
    by = {j["dataset"]: j for j in jobs}
    assert set(by) == {"sessions", "deliveries"}
    # the newest revision, scored by the version just promoted
    assert by["sessions"]["source"] == "bbb" and by["sessions"]["model_version"] == "7"
    assert by["sessions"]["chunk_rows"] == 5000
    assert by["deliveries"]["source"] == "ccc" and by["deliveries"]["model_version"] is None  # the champion
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any("churn" in m and "batch_churn.yaml" in m for m in skipped), skipped
    assert any("deliveries_eta v3 promoted" in m and "promotion" in m for m in skipped), skipped


def test_manual_runs_are_their_params_and_bad_policies_fail_clearly(policies):
    assert triggers.requested({"dataset": "sessions", "source": "x"}, None) == [{"dataset": "sessions", "source": "x"}]
    assert triggers.requested({"dataset": "sessions"}, _events()) == [{"dataset": "sessions"}]
    (policies / "batch_sessions.yaml").write_text("on_new_data: yes please\n")
    with pytest.raises(ValueError, match="batch_sessions.yaml: on_new_data: Input should be a valid boolean, "
                                         "got 'yes please'"):
        triggers.load_policy("sessions")
    (policies / "batch_sessions.yaml").write_text("on_new_dat: true\n")
    with pytest.raises(ValueError, match=r"unknown key 'on_new_dat' \(known: \['chunk_rows', 'model_version', "
                                         r"'on_new_data',"):
        triggers.load_policy("sessions")
    for rows, why in (("true", "a valid integer, got True"), ("50", "greater than or equal to 100, got 50")):
        (policies / "batch_sessions.yaml").write_text(f"chunk_rows: {rows}\n")
        with pytest.raises(ValueError, match=f"chunk_rows: Input should be {why}"):
            triggers.load_policy("sessions")
    (policies / "batch_sessions.yaml").write_text("model_version: 3\nsource:\n")  # YAML's 3 is the version "3"
    assert (triggers.load_policy("sessions").model_version, triggers.load_policy("sessions").source) == ("3", "latest")


@pytest.mark.parametrize(("text", "says"), [
    ("on_promoton: true\n", "unknown key 'on_promoton' (known: ['chunk_rows', 'model_version', 'on_new_data',"),
    ("chunk_rows: lots\n", "chunk_rows: Input should be a valid integer, got 'lots'"),
    ("- on_new_data\n", "a batch policy must be a mapping"),
])
def test_a_bad_batch_policy_names_the_file_and_the_key(tmp_path, text, says):
    from include.batch.triggers import load_policy

    (tmp_path / "batch_sessions.yaml").write_text(text)
    with pytest.raises(ValueError, match="batch_sessions.yaml") as err:
        load_policy("sessions", tmp_path)
    assert says in str(err.value), err.value
