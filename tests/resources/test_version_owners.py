"""Per-version owners (resources.owners): written with every version, and backfilled by the migration that
introduced them to exactly what the writes produce."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from fhir_api import create_app
from fhir_api.db import make_engine
from fhir_api.migrate import MIGRATIONS, alembic_config, upgrade
from tests.helpers import FHIR, authorized_client, fresh_database

OWNERS = "SELECT res_type, res_id, version, owner_type, owner_id FROM resource_version_owner"


def _observation(oid: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": subject},
        "performer": [{"reference": "Practitioner/P"}],
    }


def _coverage(cid: str, beneficiary: str, payor: str, holder: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": cid,
        "status": "active",
        "beneficiary": {"reference": f"Patient/{beneficiary}"},
        "policyHolder": {"reference": holder},
        "payor": [{"reference": f"Organization/{payor}"}],
    }


HISTORY: list[dict[str, Any] | str] = [
    {"resourceType": "Patient", "id": "A"},
    {"resourceType": "Patient", "id": "B", "link": [{"other": {"reference": "Patient/A"}, "type": "refer"}]},
    _observation("moved", "Patient/B"),
    _observation("moved", "Patient/A"),
    _observation("gone", "Patient/A"),
    "Observation/gone",
    _observation("back", "Patient/A"),
    "Observation/back",
    _observation("back", "Patient/B"),
    _coverage("cov", "A", "INS", "Organization/EMPLOYER"),  # a policy holder is no payor
    _coverage("cov", "A", "OTHER", "Patient/B"),
    # current version: an absolute reference under the server's base resolves (through the search index)
    _observation("absolute", "http://localhost/fhir/R4/Patient/A"),
    {"resourceType": "Practitioner", "id": "P"},  # in no patient's compartment: no owners
]
EXPECTED = {
    ("Patient", "B", 1, "Patient", "A"),
    ("Observation", "moved", 1, "Patient", "B"),
    ("Observation", "moved", 2, "Patient", "A"),
    ("Observation", "gone", 1, "Patient", "A"),
    ("Observation", "gone", 2, "Patient", "A"),  # a deletion keeps the owners of what it deleted
    ("Observation", "back", 1, "Patient", "A"),
    ("Observation", "back", 2, "Patient", "A"),
    ("Observation", "back", 3, "Patient", "B"),
    ("Coverage", "cov", 1, "Patient", "A"),
    ("Coverage", "cov", 1, "Organization", "INS"),
    ("Coverage", "cov", 2, "Patient", "A"),
    ("Coverage", "cov", 2, "Patient", "B"),
    ("Coverage", "cov", 2, "Organization", "OTHER"),
    ("Observation", "absolute", 1, "Patient", "A"),
}


def _owners(url: str) -> set[tuple[Any, ...]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {tuple(r) for r in conn.execute(text(OWNERS))}
    engine.dispose()
    return rows


def test_owners_are_written_with_each_version_and_backfilled_alike(tmp_path):
    with fresh_database(tmp_path, "owners") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        http = authorized_client(app)
        for step in HISTORY:
            if isinstance(step, str):
                resp = http.delete(f"/fhir/R4/{step}")
            else:
                path = f"/fhir/R4/{step['resourceType']}/{step['id']}"
                resp = http.put(path, json=step, headers={"Content-Type": FHIR})
            assert resp.status_code in (200, 201), resp.get_data(as_text=True)
        app.extensions["fhir_db"]["engine"].dispose()
        assert _owners(url) == EXPECTED

        # the database as it was before the migration, then migrated: the backfill finds the same owners
        script = next(
            s
            for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()
            if s.path.endswith("_version_owners.py")
        )
        engine = make_engine(url)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, str(script.down_revision))
        upgrade(engine)
        engine.dispose()
        assert _owners(url) == EXPECTED
