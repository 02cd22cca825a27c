"""ui fixtures: one live embedded Airflow per module (tests/e2e/live.py; the MLOps page's test uses
the session's `mlops_loop` stack of tests/conftest.py instead), a fresh headless Chromium
per test, and a screenshot + the page's HTML saved for every failed browser test."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.e2e.live import live_stack
from tests.services import unavailable
from tests.ui.browser import chromium, missing_browser, save_artifacts

ROOT = Path(__file__).resolve().parents[2]
# every DAG file is one DAG named after it (DESIGN: the DAG ids are fixed)
DAG_IDS = tuple(sorted(p.stem for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_")))
ARTIFACTS = Path(os.environ.get("MLOPS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"


def require_browser() -> None:
    reason = missing_browser()
    if reason:
        # CI installs the browser (.ci/run): there a missing one is a failure, not a skip
        unavailable(reason)


@pytest.fixture(scope="module")
def live_ui(tmp_path_factory):
    """A live `airflow standalone` whose DAGs start paused: each test unpauses the DAG it triggers,
    so no schedule or Asset event starts runs the tests did not ask for."""
    require_browser()
    state = tmp_path_factory.mktemp("live-ui")
    with live_stack("embedded", state, dag_ids=DAG_IDS,
                    extra_env={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}) as live:
        yield live


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    driver = getattr(item, "funcargs", {}).get("browser")
    if rep.failed and rep.when == "call" and driver is not None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
        try:
            png, html = save_artifacts(driver, ARTIFACTS, name)
        except Exception as err:  # noqa: BLE001 - a dead browser must not hide the test's own failure
            rep.sections.append(("ui artifacts", f"could not save a screenshot: {err!r}"))
        else:
            note = f"screenshot: {png}\npage HTML: {html}"
            rep.sections.append(("ui artifacts", note))
            print(f"\n[ui] {item.nodeid} failed; {note}")
