"""/docs in a real headless browser (Debian's chromium via Selenium) against a live server: Swagger UI
renders every operation of the document under the page's CSP, and "Try it out" with a pasted token works.

Skips when chromium or chromedriver is absent (``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil

import pytest
import requests

from fhir_api import create_app
from tests.helpers import FHIR, fresh_database, headless_chromium, mint_token, patient
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fresh_database(tmp_path_factory.mktemp("docs"), "docsui") as url, live_server(url, 1) as base:
        app = create_app({"DATABASE_URL": url, "PUBLIC_URL": base})
        token = mint_token(app, scope="system/Patient.rs", client_id="docs-reader")
        writer = {"Authorization": f"Bearer {mint_token(app)}", "Content-Type": FHIR}
        created = requests.post(f"{base}/fhir/R4/Patient", json=patient(), headers=writer, timeout=10)
        assert created.status_code == 201, created.text
        yield base, token, created.json()["id"]
        app.extensions["fhir_db"]["engine"].dispose()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(CHROMIUM, CHROMEDRIVER) as driver:
        yield driver


def _wait(driver, condition, timeout: float = 20):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def _fill(driver, op, name: str, value: str) -> None:
    """A parameter of a tried-out operation: a select for an enum (once its $ref is resolved), else a box."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    row = f'tr[data-param-name="{name}"]'
    field = _wait(driver, lambda d: op.find_element(By.CSS_SELECTOR, f"{row} select, {row} input"))
    if field.tag_name == "select":
        Select(field).select_by_value(value)
    else:
        field.send_keys(value)


def _problems(driver) -> list[str]:
    """Console errors that matter: CSP refusals, failed loads, script errors (not Swagger UI's notices)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
        or (entry["level"] == "SEVERE" and "swagger-ui-bundle.js" not in entry["message"].split(" ")[0])
    ]


def test_the_page_renders_every_operation_of_the_document(server, browser):
    from selenium.webdriver.common.by import By

    base, _token, _pid = server
    document = requests.get(f"{base}/openapi.json", timeout=10).json()
    operations = sum(1 for item in document["paths"].values() for method in item if method in METHODS)

    browser.get(f"{base}/docs")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations)
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith(document["info"]["title"])
    paths = {
        e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/fhir/R4/metadata", "/fhir/R4/{res_type}/{res_id}", "/docs"} <= paths
    assert not _problems(browser)


def test_try_it_out_with_a_pasted_token_calls_this_server(server, browser):
    from selenium.webdriver.common.by import By

    base, token, pid = server
    browser.get(f"{base}/docs")
    op = _wait(browser, lambda d: d.find_element(By.ID, "operations-fhir-fhir_read"))

    # Authorize: the bearer scheme takes a pasted access token
    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper .btn.authorize").click()
    schemes = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".modal-ux .auth-container"))
    bearer = next(s for s in schemes if s.find_element(By.CSS_SELECTOR, "h4").text.startswith("bearer"))
    bearer.find_element(By.ID, "auth-bearer-value").send_keys(token)
    bearer.find_element(By.CSS_SELECTOR, "button.authorize").click()
    authorized = (
        '.modal-ux button[aria-label="Remove authorization"]'  # the bearer form, once it holds a token
    )
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, authorized))
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()

    # GET /fhir/R4/{res_type}/{res_id}, tried out from the page
    op.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    _wait(browser, lambda d: op.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    for name, value in (("res_type", "Patient"), ("res_id", pid)):
        _fill(browser, op, name, value)
    op.find_element(By.CSS_SELECTOR, ".execute").click()
    status = _wait(
        browser,
        lambda d: op.find_element(By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"),
    )
    assert status.text == "200", op.find_element(By.CSS_SELECTOR, ".live-responses-table").text
    body = op.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre").text
    assert '"resourceType": "Patient"' in body and pid in body
    request_url = op.find_element(By.CSS_SELECTOR, ".request-url pre").text
    assert request_url == f"{base}/fhir/R4/Patient/{pid}"  # this server, not another origin
    assert not _problems(browser)
