"""``fhir-api import``: Bundles and NDJSON through the API's own write path, in parallel, idempotent where
the data lets it be (conditional creates, resources with ids)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import text

from fhir_api.cli import main as cli
from fhir_api.db import make_engine
from tests.helpers import fresh_database, patient


def _write_inputs(directory):
    org = {
        "resourceType": "Organization",
        "identifier": [{"system": "urn:org", "value": "o1"}],
        "name": "Clinic",
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:00000000-0000-0000-0000-000000000001",
                "resource": org,
                "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|o1"},
            }
        ],
    }
    (directory / "organizationInformation.json").write_text(json.dumps(bundle))
    people = [
        {
            **patient(identifier=[{"system": "urn:mrn", "value": f"m{i}"}]),
            "id": f"imp-{i}",
            "managingOrganization": {"reference": "Organization?identifier=urn:org|o1"},
        }
        for i in range(7)
    ]
    (directory / "patients.ndjson").write_text("\n".join(json.dumps(p) for p in people) + "\n")
    broken = {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST"}}]}
    return broken


def test_import_loads_in_parallel_and_reruns_without_duplicates(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    broken = _write_inputs(data)
    with fresh_database(tmp_path, "import") as url:
        monkeypatch.setenv("FHIR_DATABASE_URL", url)
        runner = CliRunner()
        for _ in range(2):
            result = runner.invoke(cli, ["import", str(data), "--workers", "2", "--chunk", "3"])
            assert result.exit_code == 0, result.output
            assert "2 files, 8 resources" in result.output and "0 failed" in result.output
        engine = make_engine(url)
        with engine.connect() as conn:
            counts = dict(
                conn.execute(text("SELECT res_type, count(*) FROM resource GROUP BY res_type")).all()
            )
            refs = conn.execute(
                text(
                    "SELECT count(*) FROM search_reference "
                    "WHERE param = 'organization' AND target_id IS NOT NULL"
                )
            ).scalar()
            audited = conn.execute(
                text("SELECT count(*) FROM audit_event WHERE client_id = 'fhir-api-import'")
            ).scalar()
        engine.dispose()
        assert counts == {"Organization": 1, "Patient": 7}
        assert refs == 7  # the conditional references resolved to the one organization
        assert audited >= 16  # every write, and every bundle, under the import's own client id
        (data / "broken.json").write_text(json.dumps(broken))
        result = runner.invoke(cli, ["import", str(data / "broken.json")])
        assert result.exit_code == 1 and "FAILED" in result.output
