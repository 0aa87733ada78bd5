"""SIGTERM with requests in flight: gunicorn stops accepting, finishes them (with their audit rows), exits."""

from __future__ import annotations

import signal
import threading
import time

import requests
from sqlalchemy import func, select, text

from audit.models import AuditRow
from fhir_api import create_app
from fhir_api.db import make_engine
from tests.helpers import empty_tables, mint_token, patient
from tests.live import live_process

ENTRIES = 150  # a transaction that takes a good fraction of a second to commit on a 2-core machine


def _transaction(tag: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                "resource": patient(name=[{"family": f"Shutdown{tag}", "given": [f"P{i}"]}]),
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(ENTRIES)
        ],
    }


def test_sigterm_finishes_in_flight_requests_with_their_audit_rows_and_refuses_new_ones(database_url):
    public = "http://shutdown.test"
    app = create_app({"DATABASE_URL": database_url, "PUBLIC_URL": public})
    headers = {"Authorization": f"Bearer {mint_token(app)}", "Content-Type": "application/fhir+json"}
    app.extensions["fhir_db"]["engine"].dispose()
    env = {"FHIR_PUBLIC_URL": public, "FHIR_RATE_LIMIT_ENABLED": "false"}
    results: dict[str, requests.Response | BaseException] = {}

    def send(base: str, tag: str) -> None:
        try:
            results[tag] = requests.post(
                f"{base}/fhir/R4",
                json=_transaction(tag),
                headers={**headers, "X-Request-Id": f"shutdown-{tag}"},
                timeout=60,
            )
        except BaseException as exc:  # reported by the assertions below
            results[tag] = exc

    with live_process(database_url, 1, env, "--threads", "4") as (base, proc):
        started = time.monotonic()
        send(base, "warmup")  # also measures how long one takes here
        took = time.monotonic() - started
        assert results["warmup"].status_code == 200
        threads = [threading.Thread(target=send, args=(base, tag)) for tag in ("a", "b", "c")]
        for t in threads:
            t.start()
        time.sleep(min(0.2, took / 4))  # all three are now being processed
        proc.send_signal(signal.SIGTERM)
        time.sleep(min(0.5, took / 2))
        refused = None
        try:
            requests.get(f"{base}/healthz", timeout=5)
        except requests.ConnectionError as exc:
            refused = exc
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=30) == 0

    assert refused is not None, "a new connection was accepted after SIGTERM"
    for tag in ("a", "b", "c"):
        resp = results[tag]
        assert isinstance(resp, requests.Response), f"in-flight request {tag} failed: {resp!r}"
        assert resp.status_code == 200, resp.text[:300]
        assert len(resp.json()["entry"]) == ENTRIES
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            for tag in ("a", "b", "c"):
                # every entry's create event and the bundle's own event carry the request id
                events = conn.execute(
                    select(func.count())
                    .select_from(AuditRow)
                    .where(AuditRow.body.contains(f'"shutdown-{tag}"'))
                ).scalar_one()
                assert events == ENTRIES + 1, (tag, events)
            stored = conn.execute(
                text("SELECT count(*) FROM resource_version WHERE res_type = 'Patient'")
            ).scalar_one()
            assert stored >= 4 * ENTRIES
    finally:
        engine.dispose()
        empty_tables(database_url)
