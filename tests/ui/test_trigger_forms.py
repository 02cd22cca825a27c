"""Every DAG can be triggered from its form in the Airflow UI, as a user does it: log in, open the
DAG's trigger modal, see the Trigger button enabled with the defaults, submit. The run's conf is
checked through the REST API; for `train` the reason typed in the form reaches the model version,
for `deploy` the version picked in the form is the one that gets deployed (issue 18)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch
from tests.ui.browser import (
    empty_required_fields,
    login,
    open_trigger_form,
    set_param,
    submit,
    submit_button,
    wait_trigger_enabled,
)
from tests.ui.conftest import DAG_IDS

pytestmark = [pytest.mark.ui, pytest.mark.slow]

# with MLOPS_UI_DOCS_IMG=docs/img the train test also saves the filled form for the README
DOCS_IMG = os.environ.get("MLOPS_UI_DOCS_IMG")
TRAIN_REASON = "ui: retrain requested from the trigger form"
DATASET = "sessions"  # the demo data's; picked in the forms (with several datasets, a default run asks which)
_trained: dict = {}  # (model, version) the train test registered, for the deploy test


def _trigger_from_form(live, browser, dag_id: str, fields: dict | None = None,
                       screenshot: Path | None = None) -> dict:
    """Unpause dag_id, log in, open its trigger form, require the Trigger button enabled with the
    defaults, fill `fields`, submit; return the run the form created (read back through the API)."""
    live.set_paused(dag_id, False)
    login(browser, live.url, live.username, live.password)
    dialog = open_trigger_form(browser, live.url, dag_id)
    assert wait_trigger_enabled(dialog), (
        f"{dag_id}: the trigger form's Trigger button is disabled with the default Params; "
        f"required but empty: {empty_required_fields(dialog)}")
    for name, value in (fields or {}).items():
        set_param(browser, dialog, name, value)
    assert submit_button(dialog).is_enabled(), (
        f"{dag_id}: Trigger disabled after filling {fields}; "
        f"required but empty: {empty_required_fields(dialog)}")
    if screenshot is not None:
        _form_screenshot(browser, dialog, screenshot)
    before = {r["dag_run_id"] for r in live.runs(dag_id)}
    submit(browser, dialog)
    deadline = time.time() + 30
    while time.time() < deadline:
        new = [r for r in live.runs(dag_id) if r["dag_run_id"] not in before and r["run_type"] == "manual"]
        if new:
            assert len(new) == 1, f"one press of Trigger created {len(new)} runs: {new}"
            return new[0]
        time.sleep(0.5)
    raise AssertionError(f"{dag_id}: no manual run appeared within 30 s of pressing Trigger")


def _assert_conf(live, dag_id: str, run: dict, typed: dict | None = None) -> None:
    """The run's conf is the Params' defaults (as the API server has them) plus what was typed."""
    expected = {**live.dag_params(dag_id), **(typed or {})}
    conf = run["conf"] or {}
    assert {k: conf.get(k) for k in expected} == expected and set(conf) <= set(expected), (
        f"{dag_id}: conf {conf} != the Params' defaults + typed values {expected}")
    if "triggering_user_name" in run:
        assert run["triggering_user_name"] == live.username, run


def _form_screenshot(browser, dialog, path: Path) -> None:
    """The whole trigger modal in one picture (a window tall enough that it does not scroll)."""
    size = browser.get_window_size()
    height = browser.execute_script("return arguments[0].scrollHeight", dialog)
    browser.set_window_size(size["width"], min(height + 200, 4000))
    time.sleep(0.5)  # relayout
    path.parent.mkdir(parents=True, exist_ok=True)
    dialog.screenshot(str(path))
    browser.set_window_size(size["width"], size["height"])
    print(f"[ui] trigger form screenshot: {path}")


def _model_versions(live) -> list[dict]:
    return json.loads(live.python(
        "import json; from include.tracking import client; "
        "print(json.dumps([{'name': v.name, 'version': str(v.version), 'tags': v.tags} "
        "for v in client().search_model_versions('')]))"))


@pytest.fixture(scope="module")
def ingested(live_ui):
    """A batch is committed to the data repo by an ingest run on the live stack: the one the
    ingest form started (its batch is landed before), else one triggered through the REST API."""
    live = live_ui
    if not live.runs("ingest"):
        live.set_paused("ingest", False)
        live.trigger("ingest")
    deadline = time.time() + 300
    while time.time() < deadline:
        with live.client() as c:
            events = c.get("/api/v2/assets/events", params={"source_dag_id": "ingest"}).json()["asset_events"]
        committed = [e for e in events if (e.get("extra") or {}).get("dataset") == DATASET]
        runs = live.runs("ingest")
        if committed or (runs and all(r["state"] in ("success", "failed") for r in runs)):
            break
        time.sleep(2)
    assert committed, [(r["dag_run_id"], r["state"], live.task_states("ingest", r["dag_run_id"]))
                       for r in live.runs("ingest")]
    live.set_paused("ingest", True)  # the batch is in: no more schedule ticks while train and deploy run
    return committed[-1]["extra"]


@pytest.fixture(scope="module", autouse=True)
def landed_batch(live_ui):
    """One good daily batch waits in the landing zone before the ingest form is submitted."""
    write_batch(make_batch(0, 3000), live_ui.state_dir / "landing" / DATASET / "day000.csv")


@pytest.mark.parametrize("dag_id", [d for d in DAG_IDS if d not in ("train", "deploy")])
def test_form_triggers_with_the_defaults(live_ui, browser, dag_id):
    try:
        run = _trigger_from_form(live_ui, browser, dag_id)
        _assert_conf(live_ui, dag_id, run)
    finally:
        if dag_id != "ingest":  # its run is not needed: keep the two cores for train and deploy
            live_ui.set_paused(dag_id, True)


def test_train_form_reason_reaches_the_model_version(live_ui, browser, ingested):
    live = live_ui
    # ingest's dataset event is queued for the paused train: drop it, so the form's run is the only one
    live.clear_queued_asset_events("train")
    shot = Path(DOCS_IMG) / "train-trigger-form.png" if DOCS_IMG else None
    typed = {"dataset": DATASET, "reason": TRAIN_REASON}
    run = _trigger_from_form(live, browser, "train", typed, screenshot=shot)
    _assert_conf(live, "train", run, typed)
    done = live.wait_run("train", run["dag_run_id"], timeout=480)
    assert done["state"] == "success", live.task_states("train", run["dag_run_id"])
    versions = _model_versions(live)
    mine = [v for v in versions if v["tags"].get("dag_run_id") == run["dag_run_id"]]
    assert len(mine) == 1, f"model versions of run {run['dag_run_id']}: {versions}"
    assert mine[0]["tags"].get("reason") == TRAIN_REASON, mine[0]["tags"]
    _trained.update(model=mine[0]["name"], version=mine[0]["version"])


@pytest.fixture
def trained(live_ui, ingested):
    """(model, version) registered by the train test, or by a train run through the REST API."""
    if not _trained:
        live = live_ui
        live.clear_queued_asset_events("train")
        live.set_paused("train", False)
        run_id = live.trigger("train", {"dataset": DATASET, "reason": "ui: deploy test fixture"})
        assert live.wait_run("train", run_id, timeout=480)["state"] == "success"
        v = next(v for v in _model_versions(live) if v["tags"].get("dag_run_id") == run_id)
        _trained.update(model=v["name"], version=v["version"])
    return _trained["model"], _trained["version"]


def test_deploy_form_deploys_the_version_picked(live_ui, browser, trained):
    live = live_ui
    model, version = trained
    # train's model_candidate event is queued for the paused deploy: drop it (the form deploys)
    live.clear_queued_asset_events("deploy")
    typed = {"dataset": DATASET, "version": version}
    run = _trigger_from_form(live, browser, "deploy", typed)
    _assert_conf(live, "deploy", run, typed)
    done = live.wait_run("deploy", run["dag_run_id"], timeout=480)
    assert done["state"] == "success", live.task_states("deploy", run["dag_run_id"])
    state = json.loads(live.python(
        "import json; from include.tracking import client; from include.config import settings; "
        f"print(json.dumps({{'champion': client().get_registered_model({model!r}).aliases.get('champion'), "
        "'reports': str(settings().reports_dir)}))"))
    assert str(state["champion"]) == version, f"alias champion of {model} is {state['champion']}, picked {version}"
    audit = Path(state["reports"]) / "deployments.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    mine = [r for r in records if r.get("event") == "deployed" and r.get("version") == version
            and run["dag_run_id"] in json.dumps(r)]
    assert mine, f"no 'deployed' audit record of {model} v{version} by run {run['dag_run_id']}: {records}"
