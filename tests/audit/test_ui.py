"""The auditor's page in a real headless browser (Debian's chromium via Selenium) against a live server.

Skips when chromium or chromedriver is absent (``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest
import requests

from fhir_api import create_app
from tests.helpers import fresh_database, headless_chromium, mint_token, patient
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chain_often = {"FHIR_AUDIT_CHAIN_INTERVAL": "0.2"}
    with (
        fresh_database(tmp_path_factory.mktemp("ui"), "auditui") as url,
        live_server(url, 1, chain_often) as base,
    ):
        app = create_app({"DATABASE_URL": url, "PUBLIC_URL": base})
        clinical = mint_token(app)
        auditor = mint_token(app, role="auditor", scope="system/AuditEvent.rs", client_id="demo-auditor")
        headers = {"Authorization": f"Bearer {clinical}", "Content-Type": "application/fhir+json"}
        pids = []
        for _ in range(3):
            resp = requests.post(f"{base}/fhir/R4/Patient", json=patient(), headers=headers, timeout=10)
            pids.append(resp.json()["id"])
        for _ in range(24):  # enough reads of the first patient to need a second page
            requests.get(f"{base}/fhir/R4/Patient/{pids[0]}", headers=headers, timeout=10)
        yield base, auditor, pids
        app.extensions["fhir_db"]["engine"].dispose()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(CHROMIUM, CHROMEDRIVER) as driver:
        yield driver


def _wait(driver, condition, timeout: float = 15):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition
    )


def _rows(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")


def _png_is_a_real_page(path: Path, width: int) -> None:
    """A PNG of the expected width whose pixels are not all one colour (a blank or failed page is)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, _colour = struct.unpack(">IIBB", data[16:26])
    assert w == width and h > 400 and depth == 8
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    assert len(set(raw[: len(raw) // 2 : 7])) > 20  # many distinct byte values: text, colours, borders


def test_auditor_page_filters_pages_shows_details_and_chain_status(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base, token, pids = server
    browser.get(f"{base}/audit/ui")
    assert browser.title == "Audit log"
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "use-token").click()
    _wait(browser, lambda d: len(_rows(d)) == 20)  # newest first, 20 a page

    status = browser.find_element(By.ID, "chain-status")
    _wait(browser, lambda d: "verified up to seq" in status.text, timeout=20)

    # filter by patient: only events naming the first patient
    browser.find_element(By.NAME, "patient").send_keys(pids[0])
    browser.find_element(By.NAME, "action").send_keys("R")
    browser.find_element(By.ID, "search").click()
    _wait(browser, lambda d: d.find_element(By.ID, "page-info").text.startswith("page 1, 20"))
    _wait(browser, lambda d: all(pids[0] in row.text and "read" in row.text for row in _rows(d)))

    # the next page holds the rest of the 24 reads
    browser.find_element(By.ID, "next").click()
    _wait(browser, lambda d: d.find_element(By.ID, "page-info").text == "page 2, 4 events")

    # one event's details
    first = _rows(browser)[0]
    first.click()
    detail = browser.find_element(By.ID, "detail")
    _wait(browser, lambda d: detail.is_displayed())
    assert f"Patient/{pids[0]}" in browser.find_element(By.ID, "detail-summary").text
    assert '"resourceType": "AuditEvent"' in browser.find_element(By.ID, "detail-json").text

    # an export downloads (with the token) and the page says so
    browser.find_element(By.CSS_SELECTOR, "#download button[data-format=ndjson]").click()
    _wait(browser, lambda d: "Downloaded audit-export.ndjson" in d.find_element(By.ID, "message").text)

    shot = tmp_path / "audit-ui.png"
    browser.save_screenshot(str(shot))
    _png_is_a_real_page(shot, 1280)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no CSP violation


def test_auditor_page_with_a_clinical_token_shows_the_refusal(server, browser):
    from selenium.webdriver.common.by import By

    base, _, _ = server
    app_token = "not-a-token"
    browser.get(f"{base}/audit/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{base}/audit/ui")
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(app_token)
    browser.find_element(By.ID, "use-token").click()
    _wait(browser, lambda d: "401" in d.find_element(By.ID, "message").text)
    assert not _rows(browser)


def test_the_page_is_served_with_a_strict_policy(server):
    base, _, _ = server
    resp = requests.get(f"{base}/audit/ui", timeout=10)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "<script src=" in resp.text and "cdn" not in resp.text.lower()
    assert requests.get(f"{base}/audit/ui/nothing.js", timeout=10).status_code == 404
