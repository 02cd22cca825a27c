"""The MLOps page in a real browser: log into the Airflow UI, open "MLOps" from the navigation
(Browse menu), and see in its frame the champion version, the gate decision with its reasons, the
rollback of a failed deploy in the timeline (with who triggered it) and a drift check's Evidently
report embedded in the page, all recorded by a short real loop (tests/integration/mlops_loop.py, on
the live stack the API tests share: the session fixture `mlops_loop`). Screenshots go to the test
artifacts; with MLOPS_UI_DOCS_IMG=docs/img they are saved for the README too."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.by import By

from tests.ui.browser import login, save_artifacts, wait_for
from tests.ui.conftest import ARTIFACTS, require_browser

pytestmark = [pytest.mark.ui, pytest.mark.slow]

DOCS_IMG = os.environ.get("MLOPS_UI_DOCS_IMG")


def _click_text(driver, text: str, css: str = "button, a, [role=menuitem]") -> None:
    def find(d):
        return next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                     if e.is_displayed() and text in (e.text.strip(), e.text.strip().split("\n")[-1],
                                                      e.get_attribute("aria-label"), e.get_attribute("title"))),
                    None)

    wait_for(driver, find, message=f"no {text!r} in the navigation").click()


def _screenshot(browser, name: str) -> Path:
    png, _ = save_artifacts(browser, ARTIFACTS, name)
    if DOCS_IMG:
        out = Path(DOCS_IMG) / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
        print(f"[ui] screenshot for the docs: {out}")
    return png


def test_mlops_page_shows_champion_gate_rollback_and_drift_report(mlops_loop, browser):
    require_browser()
    live, facts = mlops_loop
    login(browser, live.url, live.username, live.password)
    _click_text(browser, "Browse")
    _click_text(browser, "MLOps")
    # the page's frame is the signal that the link opened it (a URL polled while the frame loads
    # timed out once in CI although the URL was already right); the URL is checked once after
    frame = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "iframe[title=MLOps]"), timeout=60,
                     message="the MLOps link opened no MLOps frame")
    assert urlparse(browser.current_url).path.rstrip("/").endswith("/plugin/mlops"), browser.current_url
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
    # the failed deploy's rollback, with the user who triggered that deploy run
    rollbacks = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.rollback")
    assert rollbacks, browser.find_element(By.ID, "timeline").text[:2000]
    detail = rollbacks[0].find_elements(By.TAG_NAME, "td")[-1].text
    assert f"v{facts['version']} rolled back: a deploy step failed" in detail and detail.endswith("by admin"), detail
    browser.switch_to.default_content()
    browser.set_window_size(1400, 1300)
    time.sleep(1)  # relayout
    page_png = _screenshot(browser, "mlops-page")

    # a drift check's Evidently report, opened from the drift table, shows inside the page
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
    link = wait_for(browser, lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "#drift-table a")), None),
                    message="the drift table links no report")
    link.click()
    report = wait_for(browser, lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "iframe#drift-report")), None),
                      timeout=60, message="no embedded drift report after clicking 'view report'")
    browser.execute_script("arguments[0].scrollIntoView()", report)
    browser.switch_to.frame(report)
    # Evidently renders its report client-side: wait for the rendered content, not the HTML shell
    wait_for(browser, lambda d: "drift" in d.find_element(By.TAG_NAME, "body").text.lower(), timeout=60,
             message="the embedded Evidently report rendered nothing about drift")
    browser.switch_to.default_content()
    time.sleep(1)
    drift_png = _screenshot(browser, "mlops-drift-report")
    print(f"[ui] loop {facts['loop_s']} s; screenshots {page_png}, {drift_png}")
