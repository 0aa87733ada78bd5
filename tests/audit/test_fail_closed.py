"""Fail closed: when the audit record cannot be written, reads answer 503 and writes change nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from fhir_api import create_app
from tests.helpers import FHIR, authorized_client, fresh_database, patient, refuse_audit_inserts


@pytest.fixture
def broken_audit(tmp_path) -> Iterator[tuple]:
    """An app whose audit_event table refuses every insert (as a full disk or a revoked grant would)."""
    with fresh_database(tmp_path, "failclosed") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        client = authorized_client(app)
        pid = client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}).get_json()["id"]
        engine = app.extensions["fhir_db"]["engine"]
        refuse_audit_inserts(app)
        yield app, client, pid
        engine.dispose()


def _versions(app, pid: str) -> int:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM resource_version WHERE res_id = :i"), {"i": pid}
        ).scalar()


def _patients(app) -> int:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        return conn.execute(text("SELECT count(*) FROM resource WHERE res_type = 'Patient'")).scalar()


def _assert_audit_unavailable(resp) -> None:
    assert resp.status_code == 503, resp.get_data(as_text=True)
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "audit-unavailable"
    assert "Test" not in resp.get_data(as_text=True)  # no patient data in the answer


def test_reads_and_searches_fail_closed(broken_audit):
    _, client, pid = broken_audit
    _assert_audit_unavailable(client.get(f"/fhir/R4/Patient/{pid}"))
    _assert_audit_unavailable(client.get("/fhir/R4/Patient?family=Test"))
    _assert_audit_unavailable(client.get(f"/fhir/R4/Patient/{pid}/_history"))


def test_writes_leave_nothing_behind(broken_audit):
    app, client, pid = broken_audit
    before = _patients(app)
    _assert_audit_unavailable(client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}))
    assert _patients(app) == before
    updated = {**patient(), "id": pid, "active": True}
    _assert_audit_unavailable(
        client.put(f"/fhir/R4/Patient/{pid}", json=updated, headers={"Content-Type": FHIR})
    )
    _assert_audit_unavailable(client.delete(f"/fhir/R4/Patient/{pid}"))
    merge = {"Content-Type": "application/merge-patch+json"}
    _assert_audit_unavailable(client.patch(f"/fhir/R4/Patient/{pid}", json={"active": False}, headers=merge))
    assert _versions(app, pid) == 1


def test_refusals_fail_closed_too(broken_audit):
    """A refusal that cannot be recorded is still not answered with anything but 503."""
    app, _, pid = broken_audit
    _assert_audit_unavailable(app.test_client().get(f"/fhir/R4/Patient/{pid}"))


def test_a_client_registration_without_its_record_does_not_happen(broken_audit, tmp_path, monkeypatch):
    """The registry change and its audit row commit together: a refused record leaves no client."""
    import json

    from click.testing import CliRunner

    from fhir_api.cli import main as cli
    from tests.helpers import new_client_key

    app, _, _ = broken_audit
    monkeypatch.setenv("FHIR_DATABASE_URL", app.config["DATABASE_URL"])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(new_client_key()[1]))
    add = ["clients", "add", "lab", "--role", "clinical-system", "--scope", "system/Observation.rs"]
    result = CliRunner().invoke(cli, [*add, "--jwks-file", str(jwks)])
    assert result.exit_code != 0
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM auth_client")).scalar() == 0
