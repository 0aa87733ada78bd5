"""Revocation reaches every worker: on PostgreSQL through the per-process set that LISTEN/NOTIFY keeps
current (with the table as the fallback while the listener is down), on SQLite through the table."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from fhir_api import create_app
from fhir_api.auth.models import RevokedToken
from fhir_api.db import new_session, write_transaction
from tests.helpers import mint_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def other_worker(app, database_url):
    """A second app on the same database: another gunicorn worker, as far as revocation is concerned."""
    other = create_app({"DATABASE_URL": database_url, "TESTING": True})
    yield other
    other.extensions["fhir_db"]["engine"].dispose()


def _wait_live(app) -> None:
    watch = app.extensions.get("fhir_revocation")
    if watch is None:
        return
    deadline = time.monotonic() + 10
    while watch.is_revoked("warm-up") is None:
        assert time.monotonic() < deadline, "the revocation listener never came up"
        time.sleep(0.02)


def _refused_within(client, token: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401:
            return True
        time.sleep(0.02)
    return False


def test_a_revocation_on_one_worker_reaches_the_other(app, other_worker):
    token = mint_token(app, client_id="c1")
    here, there = app.test_client(), other_worker.test_client()
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200
    _wait_live(other_worker)
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200

    assert here.post("/auth/revoke", data={"token": token}, headers=bearer(token)).status_code == 200
    assert here.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401  # at once where revoked
    assert _refused_within(there, token, 5.0)
    # the other tokens of the client keep working everywhere
    sibling = mint_token(app, client_id="c1")
    assert there.get("/fhir/R4/Patient", headers=bearer(sibling)).status_code == 200


def test_postgresql_answers_from_memory_once_live(app, other_worker):
    if app.extensions.get("fhir_revocation") is None:
        pytest.skip("PostgreSQL only: SQLite asks the table every time")
    token = mint_token(app, client_id="c1")
    there = other_worker.test_client()
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200
    _wait_live(other_worker)
    # a row written behind the server's back (no NOTIFY) is not seen by a live listener: proof that the
    # request did not query the table, and why revocation must go through /auth/revoke or tokens.revoke
    with other_worker.app_context(), new_session() as s, write_transaction(s):
        s.add(RevokedToken(jti="not-announced", expires_at=_future()))
    watch = other_worker.extensions["fhir_revocation"]
    assert watch.is_revoked("not-announced") is False


def test_revocations_made_before_a_worker_starts_are_loaded(app, other_worker):
    token = mint_token(app, client_id="c1")
    here = app.test_client()
    assert here.post("/auth/revoke", data={"token": token}, headers=bearer(token)).status_code == 200
    there = other_worker.test_client()  # its listener starts now and loads the table
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401
    _wait_live(other_worker)
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401


def test_the_table_answers_while_the_listener_is_down(app, other_worker):
    watch = other_worker.extensions.get("fhir_revocation")
    if watch is None:
        pytest.skip("PostgreSQL only")
    token = mint_token(app, client_id="c1")
    there = other_worker.test_client()
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200
    _wait_live(other_worker)
    watch.stop()
    deadline = time.monotonic() + 5
    while watch.is_revoked("x") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # revoked without a notification reaching the stopped listener: the table still says so
    with other_worker.app_context(), new_session() as s, write_transaction(s):
        s.add(RevokedToken(jti=_jti(token), expires_at=_future()))
    assert there.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401


def _future() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=5)


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
