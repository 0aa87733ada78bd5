"""Which records wait for the database's WAL flush: those of requests that only read do not (unless
FHIR_AUDIT_FLUSH_READS), every other one does. Either way the record is committed before the answer leaves."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from audit import store
from tests.helpers import FHIR, authorized_client, create, created_id, patient


@pytest.fixture
def flushes(monkeypatch) -> list[bool]:
    """The ``flush`` of every record committed on its own (not with a write)."""
    seen: list[bool] = []
    real = store.commit_batch

    def spy(session, batch, *, flush: bool = True) -> None:
        seen.append(flush)
        real(session, batch, flush=flush)

    monkeypatch.setattr(store, "commit_batch", spy)
    return seen


def _events(app) -> int:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_event")).scalar()


def test_reads_searches_and_history_do_not_wait_for_the_flush(app, client, flushes):
    pid = created_id(create(client, patient()))
    assert flushes == []  # the create's record committed with the create
    before = _events(app)
    for path in (
        f"/fhir/R4/Patient/{pid}",
        f"/fhir/R4/Patient/{pid}/_history/1",
        "/fhir/R4/Patient?family=Test",
        f"/fhir/R4/Patient/{pid}/_history",
        "/fhir/R4/Patient/_history",
        f"/fhir/R4/Patient/{pid}/$everything",
    ):
        assert client.get(path).status_code == 200, path
    assert client.post("/fhir/R4/Patient/_search", data={"family": "Test"}).status_code == 200
    assert flushes == [False] * 7
    assert _events(app) == before + 7  # committed, and visible to another connection, at once


def test_the_auditors_reads_do_not_wait_for_the_flush(app, flushes):
    auditor = authorized_client(app, role="auditor", scope="system/AuditEvent.rs", client_id="auditor")
    for path in ("/fhir/R4/AuditEvent?_count=2", "/audit/checkpoints", "/audit/status"):
        assert auditor.get(path).status_code == 200, path
    assert flushes == [False] * 3


def test_everything_else_waits_for_the_flush(app, client, anonymous, flushes):
    pid = created_id(create(client, patient()))
    invalid = {"resourceType": "Patient", "birthDate": "not a date"}
    assert client.post("/fhir/R4/Patient", json=invalid, headers={"Content-Type": FHIR}).status_code == 400
    assert anonymous.delete(f"/fhir/R4/Patient/{pid}").status_code == 401
    kick_off = client.get("/fhir/R4/$export?_type=Patient", headers={"Prefer": "respond-async"})
    assert kick_off.status_code == 202, kick_off.get_data(as_text=True)
    assert flushes == [True] * 3  # a failed create, a refusal, an operation that starts a job


def test_flush_reads_makes_reads_wait_too(app, client, flushes):
    app.config["AUDIT_FLUSH_READS"] = "true"  # as the environment gives it
    pid = created_id(create(client, patient()))
    assert client.get(f"/fhir/R4/Patient/{pid}").status_code == 200
    assert client.get("/fhir/R4/Patient?family=Test").status_code == 200
    assert flushes == [True, True]
