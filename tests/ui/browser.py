"""A headless Chromium (Debian's `chromium` + `chromium-driver`, never a downloaded browser) driven
by Selenium, and the few steps of Airflow 3's React UI the browser tests take: the login form, a
DAG's trigger modal, its Param fields and its Trigger button."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# the machine's network is closed: nothing may phone home, update itself or sync
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
WAIT = 30  # seconds for a UI step; the API server shares 2 cores with running tasks


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not p.exists() and not shutil.which(p.name):
            return f"{p} missing: apt-get install -y {pkg} (.ci/run does it)"
    return None


def chromium(user_data_dir: Path, *, width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    """A fresh headless Chromium with its own profile dir (no state shared between tests)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    # an explicit driver path: Selenium Manager (which would download one) never runs
    driver_path = CHROMEDRIVER if CHROMEDRIVER.exists() else Path(shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=Service(str(driver_path)))
    driver.set_page_load_timeout(60)
    return driver


def wait_for(driver, condition, timeout: float = WAIT, message: str = ""):
    """Poll condition(driver) until it returns something truthy (stale elements are retried)."""
    def check(d):
        try:
            return condition(d)
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        except WebDriverException as err:  # the page navigated (a redirect) while we looked
            if "navigat" in str(err):
                return False
            raise

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(check, message)


def login(driver, url: str, username: str, password: str) -> None:
    """Sign in through the UI's login form (simple auth manager) and land on the home page."""
    driver.get(f"{url}/")
    user = wait_for(driver, lambda d: d.find_element(By.NAME, "username"), message="no login form")
    user.send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(driver, lambda d: "/auth/login" not in d.current_url
             and d.find_elements(By.CSS_SELECTOR, "button[aria-label=User]"),
             message=f"login did not leave the login page: {driver.current_url}")


def open_trigger_form(driver, url: str, dag_id: str) -> WebElement:
    """Open the DAG's page, press its Trigger button, and return the trigger modal once its Params
    are rendered."""
    driver.get(f"{url}/dags/{dag_id}")
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"),
             message=f"no Trigger button on the {dag_id} page").click()
    dialog = wait_for(driver, lambda d: next((x for x in d.find_elements(By.CSS_SELECTOR, "[role=dialog]")
                                              if f"Trigger Dag - {dag_id}" in x.text), None),
                      message=f"the trigger modal of {dag_id} did not open")
    wait_for(driver, lambda d: dialog.find_elements(By.CSS_SELECTOR, "[name^=element_]"),
             message=f"the trigger form of {dag_id} shows no Param fields")
    return dialog


def submit_button(dialog: WebElement) -> WebElement:
    return dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")


def empty_required_fields(dialog: WebElement) -> list[str]:
    """Params the form marks required (*) whose field is empty: what keeps its Trigger button
    disabled (the UI flags only the "Run Parameters" header in red, not the field)."""
    out = []
    for box in dialog.find_elements(By.CSS_SELECTOR, "input[required][name^=element_]"):
        if box.get_attribute("type") != "checkbox" and not box.get_attribute("value"):
            out.append(box.get_attribute("name").removeprefix("element_"))
    return out


def wait_trigger_enabled(dialog: WebElement, timeout: float = 10, stable: float = 1.0) -> bool:
    """True once the Trigger button has stayed enabled for `stable` seconds (the form validates its
    Params in an effect after they render, so an early look could see it enabled a moment too soon)."""
    deadline, since = time.time() + timeout, None
    while time.time() < deadline:
        if submit_button(dialog).is_enabled():
            since = since or time.time()
            if time.time() - since >= stable:
                return True
        else:
            since = None
        time.sleep(0.1)
    return False


def set_param(driver, dialog: WebElement, name: str, value: str) -> None:
    """Fill one Param field the way a user does: type into a text field, or pick from a choice."""
    texts = [e for e in dialog.find_elements(By.CSS_SELECTOR, f"input[name=element_{name}]")
             if e.get_attribute("type") != "hidden"]
    if texts:
        box = texts[0]
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(value)
        wait_for(driver, lambda d: box.get_attribute("value") == value,
                 message=f"field {name} shows {box.get_attribute('value')!r}, not {value!r}")
        return
    # an enum Param: a react-select with a hidden input holding the chosen value
    combo = dialog.find_element(By.CSS_SELECTOR, f"#element_{name} input[role=combobox]")
    combo.click()
    combo.send_keys(value)

    def option(d):
        opts = d.find_elements(By.CSS_SELECTOR, f"#element_{name} [id*='-option-']")
        return next((o for o in opts if o.text.strip() == value), None) or next(
            (o for o in opts if value in o.text), None)

    try:
        wait_for(driver, option, timeout=10).click()
    except TimeoutException as err:
        raise AssertionError(f"the {name} choice offers no {value!r}") from err
    hidden = dialog.find_element(By.CSS_SELECTOR, f"input[type=hidden][name=element_{name}]")
    wait_for(driver, lambda d: hidden.get_attribute("value") == value,
             message=f"choice {name} holds {hidden.get_attribute('value')!r}, not {value!r}")


def submit(driver, dialog: WebElement) -> None:
    """Press the form's Trigger button; the modal closes once the run is created."""
    submit_button(dialog).click()

    def closed(_):
        try:
            return not dialog.is_displayed()
        except StaleElementReferenceException:
            return True  # removed from the page

    WebDriverWait(driver, WAIT, poll_frequency=0.25).until(
        closed, "the trigger modal stayed open after pressing Trigger")


def save_artifacts(driver, directory: Path, name: str) -> tuple[Path, Path]:
    """A screenshot and the page's HTML, for a failed test."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".gitignore").write_text("*\n")
    png, html = directory / f"{name}.png", directory / f"{name}.html"
    driver.save_screenshot(str(png))
    html.write_text(driver.page_source)
    return png, html
