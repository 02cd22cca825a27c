"""The MLOps page in a real browser: log into the Airflow UI, open "MLOps" from the navigation
(Browse menu), and see in its frame the champion version and the gate decision with its reasons,
recorded by a short real loop (tests/integration/mlops_loop.py). With MLOPS_UI_DOCS_IMG=docs/img
the page's screenshot is saved for the README (docs/img/mlops-page.png)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.integration.mlops_loop import run_short_loop
from tests.ui.browser import login, save_artifacts, wait_for
from tests.ui.conftest import ARTIFACTS

pytestmark = [pytest.mark.ui, pytest.mark.slow]

DOCS_IMG = os.environ.get("MLOPS_UI_DOCS_IMG")


def _click_text(driver, text: str, css: str = "button, a, [role=menuitem]") -> None:
    def find(d):
        return next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                     if e.is_displayed() and text in (e.text.strip(), e.text.strip().split("\n")[-1],
                                                      e.get_attribute("aria-label"), e.get_attribute("title"))),
                    None)

    wait_for(driver, find, message=f"no {text!r} in the navigation").click()


def test_mlops_page_from_the_navigation_shows_champion_and_gate(live_ui, browser):
    live = live_ui
    facts = run_short_loop(live)
    login(browser, live.url, live.username, live.password)
    _click_text(browser, "Browse")
    _click_text(browser, "MLOps")
    wait_for(browser, lambda d: d.current_url.rstrip("/").endswith("/plugin/mlops"),
             message=f"the MLOps link led to {browser.current_url}")
    frame = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "iframe"), message="no page frame")
    browser.switch_to.frame(frame)
    champion = wait_for(browser, lambda d: next((td for td in d.find_elements(
        By.CSS_SELECTOR, "#overview tr[data-dataset=sessions] td.champion")), None),
        timeout=60, message="the page shows no overview row of sessions")
    assert champion.text.strip() == f"v{facts['version']}"
    row = browser.find_element(By.CSS_SELECTOR, f"#versions-table tr[data-version='{facts['version']}']")
    gate = row.find_element(By.CSS_SELECTOR, "td.gate")
    assert gate.find_element(By.CSS_SELECTOR, "b.passed").text == "passed"
    assert gate.find_elements(By.CSS_SELECTOR, "ul.reasons li"), gate.text
    kinds = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timeline td.deploy, #timeline td.gate")]
    assert "deploy" in kinds and "gate" in kinds, kinds
    browser.switch_to.default_content()
    browser.set_window_size(1400, 1300)
    time.sleep(1)  # relayout
    png, _ = save_artifacts(browser, ARTIFACTS, "mlops-page")
    if DOCS_IMG:
        out = Path(DOCS_IMG) / "mlops-page.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
        print(f"[ui] MLOps page screenshot: {out}")
    print(f"[ui] loop {facts['loop_s']} s; screenshot {png}")
