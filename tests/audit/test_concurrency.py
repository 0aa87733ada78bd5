"""Concurrency: 16 writers against a real multi-process server, then the audit log is checked whole.

A live gunicorn server with 4 worker processes (each runs its own background chainer, every 0.2 s, so the
chainers race for the lock) takes a fixed number of requests from 16 client threads: creates, updates,
reads, searches, racing updates of one shared resource and reads of a missing one. Afterwards the chain has
exactly one link per event, ``seq`` 1..N without a gap or a repeat, it verifies (hashes, MACs, signed
checkpoints), and every request, 2xx or not, is recorded by exactly one event carrying its X-Request-Id.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from audit.models import AuditRow, ChainLink
from audit.signing import derive_mac_key, load_key, public_key
from audit.verify import verify
from fhir_api import create_app
from fhir_api.db import make_engine
from tests.helpers import FHIR, fresh_database, mint_token
from tests.live import live_server

pytestmark = pytest.mark.live

WRITERS = 16
REQUESTS_PER_WRITER = 25
WORKERS = 4
CHAIN_INTERVAL = "0.2"
CHAIN_WAIT = 20.0  # seconds the background chainers get to catch up once the clients are done
# Tokens name their issuer and audience; a fixed public base lets the test mint one before the port is known.
PUBLIC_URL = "http://audit-concurrency.test"


def _request_id(writer: int, n: int) -> str:
    return f"conc-{writer:02d}-{n:03d}"


def _writer(base: str, token: str, writer: int, stop: threading.Event) -> list[tuple[str, str, int]]:
    """One client's fixed sequence of requests; returns (request id sent, X-Request-Id echoed, status)."""
    fhir = f"{base}/fhir/R4"
    sent: list[tuple[str, str, int]] = []
    patient_id: str | None = None
    own_versions = 0
    with requests.Session() as http:
        http.headers.update({"Authorization": f"Bearer {token}", "Content-Type": FHIR, "Accept": FHIR})

        def call(method: str, url: str, body: dict | None = None) -> requests.Response:
            rid = _request_id(writer, len(sent))
            resp = http.request(method, url, json=body, headers={"X-Request-Id": rid}, timeout=60)
            sent.append((rid, resp.headers.get("X-Request-Id", ""), resp.status_code))
            return resp

        def observation(obs_id: str, value: int) -> dict:
            body = {
                "resourceType": "Observation",
                "id": obs_id,
                "status": "final",
                "code": {"text": f"concurrency {writer}"},
                "valueQuantity": {"value": value, "unit": "1"},
            }
            if patient_id:
                body["subject"] = {"reference": f"Patient/{patient_id}"}
            return body

        while len(sent) < REQUESTS_PER_WRITER and not stop.is_set():
            step = len(sent) % 8
            if step == 0:  # create a patient (201)
                resp = call("POST", f"{fhir}/Patient", {"resourceType": "Patient", "active": True})
                if resp.status_code == 201:
                    patient_id = resp.headers["Location"].split("/_history/")[0].rsplit("/", 1)[1]
            elif step in (1, 4):  # create, then update, this writer's own observation
                own_versions += 1
                call("PUT", f"{fhir}/Observation/conc-{writer}", observation(f"conc-{writer}", own_versions))
            elif step == 2:  # read it back
                call("GET", f"{fhir}/Observation/conc-{writer}")
            elif step == 3:  # search by subject
                call("GET", f"{fhir}/Observation?subject=Patient/{patient_id}")
            elif step == 5:  # racing updates of one resource shared by every writer (200/201, or 409)
                call("PUT", f"{fhir}/Observation/conc-shared", observation("conc-shared", writer))
            elif step == 6:  # a search with parameters
                call("GET", f"{fhir}/Observation?code:text=concurrency&_count=5")
            else:  # a read of something that does not exist (404, still recorded)
                call("GET", f"{fhir}/Observation/conc-missing-{writer}")
    return sent


def _request_ids_in(bodies: list[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for body in bodies:
        for entity in json.loads(body).get("entity", []):
            if entity.get("type", {}).get("code") == "XrequestId":
                found[entity["what"]["identifier"]["value"]] += 1
    return found


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(AuditRow)).scalar_one()
        links = conn.execute(select(func.count()).select_from(ChainLink)).scalar_one()
    return events, links


def test_sixteen_writers_leave_a_gap_free_chain_that_verifies_with_every_request_recorded(
    tmp_path: Path, audit_key_file: Path
):
    with fresh_database(tmp_path, "auditconc") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True, "PUBLIC_URL": PUBLIC_URL})
        token = mint_token(app, scope="system/*.*")
        app.extensions["fhir_db"]["engine"].dispose()
        engine = make_engine(url)
        try:
            assert _counts(engine) == (0, 0)
            env = {
                "FHIR_AUDIT_CHAIN_INTERVAL": CHAIN_INTERVAL,
                "FHIR_PUBLIC_URL": PUBLIC_URL,
                # live_server never reads the server's piped output: ~130 bytes of access log per request
                # would fill the 64 KiB pipe after ~500 requests and block the workers. Warnings only.
                "FHIR_LOG_LEVEL": "WARNING",
            }
            with live_server(url, workers=WORKERS, env=env) as base:
                stop = threading.Event()
                started = time.monotonic()
                with ThreadPoolExecutor(WRITERS) as pool:
                    futures = [pool.submit(_writer, base, token, w, stop) for w in range(WRITERS)]
                    try:
                        results = [f.result() for f in futures]
                    finally:
                        stop.set()
                elapsed = time.monotonic() - started

                # The background chainers (one per worker process) chain everything without help.
                deadline = time.monotonic() + CHAIN_WAIT
                while True:
                    events, links = _counts(engine)
                    if events == links or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            sent = [r for result in results for r in result]
            assert len(sent) == WRITERS * REQUESTS_PER_WRITER
            assert all(rid == echoed for rid, echoed, _ in sent), "the server did not echo X-Request-Id"
            statuses = Counter(status for _, _, status in sent)
            assert set(statuses) <= {200, 201, 404, 409}, (statuses, elapsed)
            assert statuses[201] >= WRITERS and statuses[404] >= WRITERS, statuses

            # Every request wrote exactly one event, and every event was chained exactly once.
            assert events == len(sent), f"{events} events for {len(sent)} requests ({statuses})"
            assert links == events, f"{events - links} of {events} events still unchained after {CHAIN_WAIT}s"
            with engine.connect() as conn:
                seqs = conn.execute(select(ChainLink.seq).order_by(ChainLink.seq)).scalars().all()
                chained = conn.execute(select(ChainLink.pos)).scalars().all()
                rows = conn.execute(select(AuditRow.pos, AuditRow.body)).all()
            assert seqs == list(range(1, events + 1)), "audit_chain seq has a gap or a repeat"
            assert sorted(chained) == sorted(pos for pos, _ in rows), "links do not name each event once"

            key = load_key(audit_key_file)
            report = verify(engine, key=public_key(key.as_dict(private=False)), mac_key=derive_mac_key(key))
            assert report.ok, report.problems
            assert (report.checked, report.head_seq, report.unchained) == (events, events, 0)
            assert report.checkpoints >= 1  # the chainers signed the head at least once

            recorded = _request_ids_in([body for _, body in rows])
            ok = [rid for rid, _, status in sent if 200 <= status < 300]
            assert not [rid for rid in ok if recorded[rid] != 1], "2xx requests without exactly one event"
            assert {rid: recorded[rid] for rid, _, _ in sent if recorded[rid] != 1} == {}
            assert set(recorded) == {rid for rid, _, _ in sent}, "events for requests never sent"
        finally:
            engine.dispose()
