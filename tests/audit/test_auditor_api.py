"""What auditors use: AuditEvent search, checkpoints, exports with signed manifests, the CLI."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from joserfc import jws
from joserfc.jwk import OKPKey

from audit.chain import catch_up
from audit.export_check import check_file
from audit.signing import app_key, public_key
from fhir_api import create_app
from fhir_api.cli import main as cli
from tests.helpers import FHIR, authorized_client, fresh_database, new_client_key, patient


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A log of its own: two patients, reads and searches by two clients, one refusal; chained."""
    with fresh_database(tmp_path_factory.mktemp("auditor"), "auditor") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        hospital = authorized_client(app, client_id="hospital")
        gp = authorized_client(app, client_id="gp")
        ids = {}
        for name, http in (("a", hospital), ("b", gp)):
            resp = http.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR})
            ids[name] = resp.get_json()["id"]
        hospital.get(f"/fhir/R4/Patient/{ids['b']}")  # the hospital saw patient b
        gp.get(f"/fhir/R4/Patient?_id={ids['a']}")  # the gp found patient a by search
        gp.get("/fhir/R4/Patient/unknown")  # a failure
        catch_up(app.extensions["fhir_db"]["engine"], key=app_key(app), every=0)
        auditor = authorized_client(app, role="auditor", scope="system/AuditEvent.rs", client_id="auditor")
        yield app, auditor, ids, url
        app.extensions["fhir_db"]["engine"].dispose()


def _search(auditor, query: str) -> list[dict]:
    resp = auditor.get(f"/fhir/R4/AuditEvent?{query}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    bundle = resp.get_json()
    assert bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


def _summary(events: list[dict]) -> list[tuple[str, str]]:
    return [
        (e["subtype"][0]["code"], e["agent"][0]["who"].get("identifier", {}).get("value")) for e in events
    ]


def test_who_saw_patient_b(log):
    _, auditor, ids, _ = log
    events = _search(auditor, f"patient={ids['b']}&action=R,C")
    assert sorted(_summary(events)) == [("create", "gp"), ("read", "hospital")]


def test_searches_that_returned_a_patient_name_it(log):
    _, auditor, ids, _ = log
    events = _search(auditor, f"patient=Patient/{ids['a']}&subtype=search-type")
    assert _summary(events) == [("search-type", "gp")]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("agent=gp&action=C", [("create", "gp")]),
        ("entity=Patient/unknown", [("read", "gp")]),
        ("outcome=4&agent=gp", [("read", "gp")]),
        (
            "type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest&agent=hospital&action=R",
            [("read", "hospital")],
        ),
        (
            "date=ge2000-01-01&agent=hospital&subtype=http://hl7.org/fhir/restful-interaction|read",
            [("read", "hospital")],
        ),
        ("date=lt2000-01-01", []),
    ],
)
def test_search_parameters(log, query, expected):
    _, auditor, _, _ = log
    assert _summary(_search(auditor, query)) == expected


def test_paging_walks_every_event_once(log):
    _, auditor, _, _ = log
    seen, url = [], "/fhir/R4/AuditEvent?_count=2"
    while url:
        bundle = auditor.get(url).get_json()
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://localhost", "") if nxt else None
    assert len(seen) == len(set(seen)) >= 6


def test_full_urls_name_each_event(log):
    """Failure events contain an OperationOutcome with an id of its own: the fullUrl must still be the
    event's."""
    _, auditor, _, _ = log
    bundle = auditor.get("/fhir/R4/AuditEvent?outcome=4").get_json()
    assert bundle["entry"]
    for e in bundle["entry"]:
        assert e["resource"]["contained"]
        assert e["fullUrl"] == f"http://localhost/fhir/R4/AuditEvent/{e['resource']['id']}"


def test_unknown_search_parameter_is_refused(log):
    _, auditor, _, _ = log
    resp = auditor.get("/fhir/R4/AuditEvent?name=x")
    assert resp.status_code == 400
    assert resp.get_json()["issue"][0]["expression"] == ["name"]


def test_checkpoints_are_signed_with_the_published_key(log):
    _, auditor, _, _ = log
    body = auditor.get("/audit/checkpoints").get_json()
    key = OKPKey.import_key(body["key"])
    newest = body["checkpoints"][0]
    payload = json.loads(jws.deserialize_compact(newest["jws"], key, algorithms=["Ed25519"]).payload)
    assert payload["seq"] == newest["seq"] and payload["hash"] == newest["hash"]
    assert body["head"]["seq"] >= newest["seq"]
    assert len(auditor.get("/audit/checkpoints?_count=1").get_json()["checkpoints"]) == 1
    for bad in ("0", "x", "-1", "1&_count=2"):
        refused = auditor.get(f"/audit/checkpoints?_count={bad}")
        assert refused.status_code == 400 and refused.get_json()["issue"][0]["expression"] == ["_count"]


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "bundle"])
def test_exports_verify_and_tampering_shows(log, tmp_path, fmt):
    app, auditor, ids, _ = log
    resp = auditor.get(f"/audit/export?format={fmt}&patient={ids['b']}")
    assert resp.status_code == 200
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(resp.get_data())
    key = public_key(app_key(app).as_dict(private=False))
    report, manifest = check_file(path, key, app.extensions["fhir_db"]["engine"])
    assert report.ok, report.problems
    assert manifest["count"] == report.checked == 2 and manifest["filter"] == {
        "patient": f"Patient/{ids['b']}"
    }
    tampered = tmp_path / f"tampered.{fmt}"
    tampered.write_bytes(path.read_bytes().replace(b"hospital", b"hospitaX", 1))
    report, _ = check_file(tampered, key)
    assert not report.ok
    cut = tmp_path / f"cut.{fmt}"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):  # a truncated file does not even parse as what it claims to be
        if fmt == "bundle":
            check_file(cut, key)
        else:
            report, _ = check_file(cut, key)
            assert not report.ok
            raise ValueError("no manifest")


def test_cli_export_then_verify(log, tmp_path, monkeypatch):
    _, _, _, url = log
    monkeypatch.setenv("FHIR_DATABASE_URL", url)
    out = tmp_path / "all.ndjson"
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert json.loads(lines[-1])["resourceType"] == "Parameters"
    result = runner.invoke(cli, ["audit", "verify", "--export", str(out)])
    assert result.exit_code == 0 and "verified" in result.output, result.output
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0 and "verified" in result.output, result.output
    saved = tmp_path / "checkpoint.json"
    result = runner.invoke(cli, ["audit", "checkpoint"])
    saved.write_text(result.output)
    result = runner.invoke(cli, ["audit", "verify", "--checkpoint", str(saved)])
    assert result.exit_code == 0, result.output
    # the export itself was recorded, as a CLI operation
    result = runner.invoke(
        cli, ["audit", "export", "--format", "csv", "-o", str(tmp_path / f"{uuid.uuid4()}.csv")]
    )
    assert result.exit_code == 0, result.output


def test_cli_operations_are_recorded(log, tmp_path, monkeypatch):
    _, auditor, _, url = log
    monkeypatch.setenv("FHIR_DATABASE_URL", url)
    runner = CliRunner()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(new_client_key()[1]))
    add = ["clients", "add", "lab", "--role", "clinical-system", "--scope", "system/Observation.rs"]
    result = runner.invoke(cli, [*add, "--jwks-file", str(jwks)])
    assert result.exit_code == 0, result.output
    client_id = result.output.strip().splitlines()[-1]
    assert runner.invoke(cli, ["clients", "disable", client_id]).exit_code == 0
    events = _search(auditor, "type=110113")
    facts = [
        {d["type"]: d["valueString"] for e in ev["entity"] for d in e.get("detail", [])} for ev in events
    ]
    assert {"operation": "clients add", "client": client_id} in [
        {k: v for k, v in f.items() if k in ("operation", "client")} for f in facts
    ]
    assert {"operation": "clients disable", "client": client_id} in [
        {k: v for k, v in f.items() if k in ("operation", "client")} for f in facts
    ]
    operators = [a["who"].get("display") for ev in events for a in ev["agent"] if a["requestor"]]
    assert operators and all(op and "@" in op for op in operators)


def test_capability_statement_describes_the_audit_log(client):
    body = client.get("/fhir/R4/metadata").get_json()
    (entry,) = [r for r in body["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert [i["code"] for i in entry["interaction"]] == ["read", "search-type"]
    names = {p["name"] for p in entry["searchParam"]}
    assert {"date", "patient", "agent", "entity", "action", "type", "subtype", "outcome"} <= names
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    CapabilityStatement.model_validate(body)
