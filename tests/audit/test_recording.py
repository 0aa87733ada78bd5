"""Every interaction leaves exactly the AuditEvents it should: a table of requests and their expected
records (count, type, subtype, action, outcome, agents, entities, patients), failures and denials included.

Each request carries its own X-Request-Id; its events are found by it (BALP's transaction entity).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import text

from tests.helpers import (
    FHIR,
    authorized_client,
    client_assertion,
    new_client_key,
    patient,
    register_client,
)

TOKEN_URL = "http://localhost/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def events_of(app, request_id: str) -> list[dict[str, Any]]:
    engine = app.extensions["fhir_db"]["engine"]
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT body FROM audit_event WHERE body LIKE :rid ORDER BY pos"), {"rid": f"%{request_id}%"}
        )
        return [json.loads(body) for (body,) in rows]


def agent_ids(event: dict[str, Any]) -> dict[str, Any]:
    """Client id, requestor flag and policy (token id) of the Source Role ID agent; whether a server agent
    and a user agent are present."""
    out: dict[str, Any] = {"server": False, "user": None}
    for agent in event["agent"]:
        code = agent["type"]["coding"][0]["code"]
        if code == "110153":
            out["client"] = agent["who"].get("identifier", {}).get("value")
            out["address"] = agent.get("network", {}).get("address")
            out["policy"] = agent.get("policy")
        elif code == "110152":
            out["server"] = True
        elif code == "IRCP":
            out["user"] = agent["who"]
    return out


def entity_refs(event: dict[str, Any], role: str) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if e.get("role", {}).get("code") == role]


def recorded_query(event: dict[str, Any]) -> str | None:
    for e in event.get("entity", []):
        if e.get("role", {}).get("code") == "24":
            return base64.b64decode(e["query"]).decode()
    return None


@dataclass
class Expect:
    subtype: str
    action: str
    outcome: str = "0"
    resource: str | None = None  # "Type/{id}" template (may include /_history/n)
    patients: list[str] = field(default_factory=list)  # templates
    query: bool = False
    client: str | None = "test-client"
    event_type: str = "rest"


@pytest.fixture
def world(app, client):
    """A patient with an observation, and ids to refer to them."""
    pid = client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}).get_json()["id"]
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = client.post("/fhir/R4/Observation", json=obs, headers={"Content-Type": FHIR}).get_json()["id"]
    return {"pid": pid, "oid": oid, "obs": obs}


def _call(http, method: str, path: str, rid: str, body: Any = None, headers: dict[str, str] | None = None):
    hdrs = {"X-Request-Id": rid, **(headers or {})}
    if body is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = FHIR
    return http.open(path, method=method, json=body, headers=hdrs)


# (name, method, path, body, extra headers, expected status, expected events)
CASES: list[tuple[str, str, str, Any, dict[str, str], int, list[Expect]]] = [
    (
        "create",
        "POST",
        "/fhir/R4/Patient",
        "patient",
        {},
        201,
        [Expect("create", "C", resource="Patient/{new}/_history/1", patients=["Patient/{new}"])],
    ),
    (
        "read",
        "GET",
        "/fhir/R4/Patient/{pid}",
        None,
        {},
        200,
        [Expect("read", "R", resource="Patient/{pid}/_history/1", patients=["Patient/{pid}"])],
    ),
    (
        "read of a member",
        "GET",
        "/fhir/R4/Observation/{oid}",
        None,
        {},
        200,
        [Expect("read", "R", resource="Observation/{oid}/_history/1", patients=["Patient/{pid}"])],
    ),
    (
        "vread",
        "GET",
        "/fhir/R4/Observation/{oid}/_history/1",
        None,
        {},
        200,
        [Expect("vread", "R", resource="Observation/{oid}/_history/1", patients=["Patient/{pid}"])],
    ),
    (
        "update",
        "PUT",
        "/fhir/R4/Observation/{oid}",
        "obs",
        {},
        200,
        [Expect("update", "U", resource="Observation/{oid}/_history/2", patients=["Patient/{pid}"])],
    ),
    (
        "update as create",
        "PUT",
        "/fhir/R4/Patient/made-by-put",
        "patient-put",
        {},
        201,
        [Expect("update", "C", resource="Patient/made-by-put/_history/1", patients=["Patient/made-by-put"])],
    ),
    (
        "patch",
        "PATCH",
        "/fhir/R4/Patient/{pid}",
        {"active": True},
        {"Content-Type": "application/merge-patch+json"},
        200,
        [Expect("patch", "U", resource="Patient/{pid}/_history/2", patients=["Patient/{pid}"])],
    ),
    (
        "delete",
        "DELETE",
        "/fhir/R4/Observation/{oid}",
        None,
        {},
        200,
        [Expect("delete", "D", resource="Observation/{oid}/_history/2", patients=["Patient/{pid}"])],
    ),
    (
        "search-type",
        "GET",
        "/fhir/R4/Observation?subject=Patient/{pid}",
        None,
        {},
        200,
        [Expect("search-type", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "search with _include",
        "GET",
        "/fhir/R4/Observation?code=8867-4&_include=Observation:subject",
        None,
        {},
        200,
        [Expect("search-type", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "search by _revinclude",
        "GET",
        "/fhir/R4/Patient?_id={pid}&_revinclude=Observation:subject",
        None,
        {},
        200,
        [Expect("search-type", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "search-system",
        "GET",
        "/fhir/R4?_type=Observation",
        None,
        {},
        200,
        [Expect("search-system", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "search by POST",
        "POST",
        "/fhir/R4/Observation/_search",
        None,
        {"Content-Type": "application/x-www-form-urlencoded"},
        200,
        [Expect("search-type", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "compartment search",
        "GET",
        "/fhir/R4/Patient/{pid}/Observation",
        None,
        {},
        200,
        [Expect("search-type", "E", patients=["Patient/{pid}"], query=True)],
    ),
    (
        "history-instance",
        "GET",
        "/fhir/R4/Observation/{oid}/_history",
        None,
        {},
        200,
        [Expect("history-instance", "R", patients=["Patient/{pid}"])],
    ),
    (
        "history-type",
        "GET",
        "/fhir/R4/Observation/_history",
        None,
        {},
        200,
        [Expect("history-type", "R", patients=["Patient/{pid}"])],
    ),
    (
        "history-system",
        "GET",
        "/fhir/R4/_history",
        None,
        {},
        200,
        [Expect("history-system", "R", patients=["Patient/{pid}"])],
    ),
    (
        "conditional create, new",
        "POST",
        "/fhir/R4/Patient",
        "patient",
        {"If-None-Exist": "identifier=urn:x|new-1"},
        201,
        [Expect("create", "C", resource="Patient/{new}/_history/1", patients=["Patient/{new}"], query=True)],
    ),
    (
        "conditional update",
        "PUT",
        "/fhir/R4/Observation?code=8867-4",
        "obs",
        {},
        200,
        [
            Expect(
                "update", "U", resource="Observation/{oid}/_history/2", patients=["Patient/{pid}"], query=True
            )
        ],
    ),
    (
        "conditional delete",
        "DELETE",
        "/fhir/R4/Observation?code=8867-4",
        None,
        {},
        200,
        [
            Expect(
                "delete", "D", resource="Observation/{oid}/_history/2", patients=["Patient/{pid}"], query=True
            )
        ],
    ),
    # failures: the attempt is recorded, with the OperationOutcome
    (
        "read of an unknown id",
        "GET",
        "/fhir/R4/Patient/no-such",
        None,
        {},
        404,
        [Expect("read", "R", "4", resource="Patient/no-such", patients=["Patient/no-such"])],
    ),
    (
        "update with a stale If-Match",
        "PUT",
        "/fhir/R4/Observation/{oid}",
        "obs",
        {"If-Match": 'W/"7"'},
        412,
        [Expect("update", "U", "4", resource="Observation/{oid}")],
    ),
    (
        "invalid search",
        "GET",
        "/fhir/R4/Patient?birthdate=not-a-date",
        None,
        {},
        400,
        [Expect("search-type", "E", "4", query=True)],
    ),
]


def _expand(template: str, ids: dict[str, str]) -> str:
    return template.format(**ids)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_interaction_is_recorded_as_expected(app, client, world, case):
    name, method, path, body, headers, status, expected = case
    ids = dict(world)
    bodies = {
        "patient": patient(identifier=[{"system": "urn:x", "value": "new-1"}]),
        "patient-put": {**patient(), "id": "made-by-put"},
        "obs": {**world["obs"], "id": world["oid"], "status": "amended"},
    }
    if isinstance(body, str):
        body = bodies[body]
    if name == "conditional update":
        body = {k: v for k, v in body.items() if k != "id"}
    rid = f"t-{uuid.uuid4().hex}"
    resp = _call(client, method, _expand(path, ids), rid, body, headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    if resp.status_code == 201:
        ids["new"] = resp.headers["Location"].split("/_history/")[0].rsplit("/", 1)[1]
    events = events_of(app, rid)
    assert len(events) == len(expected), [e["subtype"] for e in events]
    for event, want in zip(events, expected, strict=True):
        AuditEvent.model_validate(event)  # a valid R4(B) AuditEvent
        assert event["type"]["code"] == want.event_type
        assert event["subtype"][0]["code"] == want.subtype
        assert event["action"] == want.action
        assert event["outcome"] == want.outcome
        agents = agent_ids(event)
        assert agents["server"] and agents["client"] == want.client and agents["address"] == "127.0.0.1"
        assert agents["policy"] and len(agents["policy"][0]) >= 16  # the token's jti
        if want.resource:
            assert _expand(want.resource, ids) in entity_refs(event, "4")
        assert sorted(entity_refs(event, "1")) == sorted(_expand(p, ids) for p in want.patients)
        assert (recorded_query(event) is not None) == want.query
        if want.outcome != "0":
            contained = event["contained"][0]
            assert contained["resourceType"] == "OperationOutcome" and event["outcomeDesc"].startswith(
                "HTTP "
            )


def test_a_request_without_a_token_is_recorded_without_a_client(app, anonymous, world):
    rid = f"t-{uuid.uuid4().hex}"
    resp = anonymous.get(f"/fhir/R4/Patient/{world['pid']}", headers={"X-Request-Id": rid})
    assert resp.status_code == 401
    (event,) = events_of(app, rid)
    assert event["outcome"] == "4" and event["subtype"][0]["code"] == "read"
    assert agent_ids(event)["client"] is None
    assert entity_refs(event, "1") == [f"Patient/{world['pid']}"]  # "who tried to see patient X"


def test_a_forbidden_request_is_recorded(app, world):
    lab = authorized_client(app, scope="system/Observation.rs", client_id="lab-client")
    rid = f"t-{uuid.uuid4().hex}"
    resp = lab.get(f"/fhir/R4/Patient/{world['pid']}", headers={"X-Request-Id": rid})
    assert resp.status_code == 403
    (event,) = events_of(app, rid)
    assert event["outcome"] == "4" and agent_ids(event)["client"] == "lab-client"
    assert "scopes" in event["contained"][0]["issue"][0]["diagnostics"]


def test_a_failed_write_leaves_only_its_failure_record(app, client, world):
    """The refused update rolled back: no success event for it, one failure event."""
    rid = f"t-{uuid.uuid4().hex}"
    bad = {**world["obs"], "id": world["oid"], "valueQuantity": "not a quantity"}
    resp = _call(client, "PUT", f"/fhir/R4/Observation/{world['oid']}", rid, bad)
    assert resp.status_code == 400
    (event,) = events_of(app, rid)
    assert (event["action"], event["outcome"]) == ("U", "4")


def test_protected_query_values_are_recorded_blinded(app, client, world):
    rid = f"t-{uuid.uuid4().hex}"
    resp = client.get(
        "/fhir/R4/Patient?family=Zebedee&birthdate=1970&_count=5", headers={"X-Request-Id": rid}
    )
    assert resp.status_code == 200
    (event,) = events_of(app, rid)
    query = recorded_query(event)
    assert "Zebedee" not in json.dumps(event) and "1970" not in json.dumps(event)
    assert "family=blind:" in query and "birthdate=blind:" in query and "_count=5" in query
    again = f"t-{uuid.uuid4().hex}"
    client.get("/fhir/R4/Patient?family=Zebedee", headers={"X-Request-Id": again})
    (second,) = events_of(app, again)
    blinded = query.split("family=")[1].split("&")[0]
    assert f"family={blinded}" in recorded_query(second)  # equal values correlate


def test_token_issuance_and_refusal_are_recorded(app, anonymous):
    key, jwks = new_client_key("ES384")
    client_id = register_client(app, scope="system/Patient.rs", jwks=jwks)
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, client_id, TOKEN_URL),
    }
    rid = f"t-{uuid.uuid4().hex}"
    resp = anonymous.post("/auth/token", data=form, headers={"X-Request-Id": rid})
    assert resp.status_code == 200
    (issued,) = events_of(app, rid)
    assert issued["type"]["code"] == "110114" and issued["subtype"][0]["code"] == "110122"
    assert issued["outcome"] == "0" and agent_ids(issued)["client"] == client_id
    other, _ = new_client_key("ES384")
    form["client_assertion"] = client_assertion(other, client_id, TOKEN_URL)
    rid = f"t-{uuid.uuid4().hex}"
    assert anonymous.post("/auth/token", data=form, headers={"X-Request-Id": rid}).status_code in (400, 401)
    (refused,) = events_of(app, rid)
    assert refused["outcome"] == "4" and agent_ids(refused)["client"] == client_id  # as claimed
    assert form["client_assertion"][:40] not in json.dumps(refused)  # the credential itself is not kept


def test_audit_searches_and_exports_are_recorded_too(app, world):
    auditor = authorized_client(app, role="auditor", scope="system/AuditEvent.rs", client_id="the-auditor")
    rid = f"t-{uuid.uuid4().hex}"
    assert (
        auditor.get(f"/fhir/R4/AuditEvent?patient={world['pid']}", headers={"X-Request-Id": rid}).status_code
        == 200
    )
    (searched,) = events_of(app, rid)
    assert (searched["subtype"][0]["code"], agent_ids(searched)["client"]) == ("search-type", "the-auditor")
    rid = f"t-{uuid.uuid4().hex}"
    resp = auditor.get("/audit/export?format=csv", headers={"X-Request-Id": rid})
    assert resp.status_code == 200
    resp.get_data()
    (exported,) = events_of(app, rid)
    assert exported["type"]["code"] == "110106" and exported["action"] == "E"


@pytest.mark.parametrize(
    "role,scope",
    [("clinical-system", "system/*.*"), ("insurer", "system/Patient.rs"), ("patient", "patient/*.rs")],
)
def test_only_auditors_read_the_log(app, role, scope):
    http = authorized_client(app, role=role, scope=scope, patient="p1", organization="org1")
    for path in ("/fhir/R4/AuditEvent", "/audit/checkpoints", "/audit/export"):
        assert http.get(path).status_code == 403, (role, path)


def test_no_api_path_changes_an_audit_event(app, world):
    auditor = authorized_client(app, role="auditor", scope="system/AuditEvent.rs")
    rid = f"t-{uuid.uuid4().hex}"
    auditor.get("/fhir/R4/AuditEvent?_count=1", headers={"X-Request-Id": rid})
    event_id = events_of(app, rid)[0]["id"]
    admin = authorized_client(app)
    for http in (auditor, admin):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/fhir/R4/AuditEvent", f"/fhir/R4/AuditEvent/{event_id}"):
                resp = http.open(path, method=method, json={"resourceType": "AuditEvent"})
                assert resp.status_code == 405, (method, path)
        assert http.get(f"/fhir/R4/AuditEvent/{event_id}/_history/1").status_code == 405
        assert http.get(f"/fhir/R4/Patient/{world['pid']}/AuditEvent").status_code == 405
    assert auditor.get(f"/fhir/R4/AuditEvent/{event_id}").status_code == 200
