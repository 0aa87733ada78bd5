"""Transaction and batch Bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from tests.helpers import FHIR, authorized_client, patient

U1, U2, U3 = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))


def entry(method: str, url: str, resource: dict[str, Any] | None = None, full_url: str | None = None, **req):
    out: dict[str, Any] = {"request": {"method": method, "url": url, **req}}
    if resource is not None:
        out["resource"] = resource
    if full_url:
        out["fullUrl"] = full_url
    return out


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(client, body: dict[str, Any], **headers: str):
    return client.post("/fhir/R4", json=body, headers={"Content-Type": FHIR, **headers})


def counts(app) -> dict[str, int]:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        return {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
            for t in ("resource", "resource_version", "search_reference", "search_token", "audit_event")
        }


def obs(subject: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": subject},
        **more,
    }


def test_transaction_rewrites_fullurl_references_wherever_they_sit(client):
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": U1},
        "extension": [{"url": "http://example.org/x", "valueReference": {"reference": U1}}],
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{U1}">p</a></div>',
        },
    }
    resp = post(
        client,
        bundle(
            "transaction",
            entry("POST", "Patient", patient(), U1),
            entry("POST", "Encounter", encounter, U2),
            entry(
                "POST",
                "Observation",
                obs(U1, encounter={"reference": U2}, hasMember=[{"reference": U3}]),
                None,
            ),
            entry("POST", "Observation", obs(U1), U3),
        ),
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created"] * 4
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    enc_id = out["entry"][1]["response"]["location"].split("/")[1]
    member_id = out["entry"][3]["response"]["location"].split("/")[1]
    enc = client.get(f"/fhir/R4/Encounter/{enc_id}").get_json()
    assert enc["subject"]["reference"] == f"Patient/{pid}"
    assert enc["extension"][0]["valueReference"]["reference"] == f"Patient/{pid}"
    assert f'href="Patient/{pid}"' in enc["text"]["div"]
    o = client.get(f"/fhir/R4/{out['entry'][2]['response']['location'].rsplit('/_history', 1)[0]}").get_json()
    assert o["encounter"]["reference"] == f"Encounter/{enc_id}"
    assert o["hasMember"][0]["reference"] == f"Observation/{member_id}"
    # and the reference index followed: a search by the rewritten reference finds them
    found = client.get(f"/fhir/R4/Observation?subject=Patient/{pid}").get_json()
    assert len(found["entry"]) == 2
    for e in out["entry"]:
        assert e["response"]["etag"] == 'W/"1"' and e["response"]["lastModified"]


def test_a_failing_entry_rolls_everything_back(app, client):
    before = counts(app)
    bad = obs(U1, valueQuantity="not a quantity")
    resp = post(
        client,
        bundle("transaction", entry("POST", "Patient", patient(), U1), entry("POST", "Observation", bad)),
    )
    assert resp.status_code == 400
    issue = resp.get_json()["issue"][0]
    assert issue["diagnostics"].startswith("Bundle.entry[1] (POST Observation)")
    after = counts(app)
    assert {k: after[k] - before[k] for k in after} == {
        "resource": 0,
        "resource_version": 0,
        "search_reference": 0,
        "search_token": 0,
        "audit_event": 1,  # the refused bundle, recorded as such; no entry's event survives
    }


def test_an_error_found_while_writing_rolls_back_too(app, client):
    """The failure comes after earlier entries were written (an If-Match that does not hold)."""
    pid = client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}).get_json()["id"]
    before = counts(app)
    resp = post(
        client,
        bundle(
            "transaction",
            entry("POST", "Patient", patient(), U1),
            entry("PUT", f"Patient/{pid}", {**patient(), "id": pid, "active": True}, ifMatch='W/"9"'),
        ),
    )
    assert resp.status_code == 412, resp.get_data(as_text=True)
    after = counts(app)
    assert after["resource"] == before["resource"] and after["resource_version"] == before["resource_version"]
    assert after["audit_event"] == before["audit_event"] + 1


def test_conditional_references(client):
    mrn = f"mrn-{uuid.uuid4().hex[:8]}"
    client.post(
        "/fhir/R4/Patient",
        json=patient(identifier=[{"system": "urn:mrn", "value": mrn}]),
        headers={"Content-Type": FHIR},
    )
    resp = post(
        client, bundle("transaction", entry("POST", "Observation", obs(f"Patient?identifier=urn:mrn|{mrn}")))
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    location = resp.get_json()["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    subject = client.get(f"/fhir/R4/{location}").get_json()["subject"]["reference"]
    assert subject.startswith("Patient/") and "?" not in subject
    none = post(
        client, bundle("transaction", entry("POST", "Observation", obs("Patient?identifier=urn:mrn|nobody")))
    )
    assert none.status_code == 412 and "matches nothing" in none.get_json()["issue"][0]["diagnostics"]
    client.post(
        "/fhir/R4/Patient",
        json=patient(identifier=[{"system": "urn:mrn", "value": mrn}]),
        headers={"Content-Type": FHIR},
    )
    two = post(
        client, bundle("transaction", entry("POST", "Observation", obs(f"Patient?identifier=urn:mrn|{mrn}")))
    )
    assert two.status_code == 412 and "more than one" in two.get_json()["issue"][0]["diagnostics"]
    dangling = post(
        client, bundle("transaction", entry("POST", "Observation", obs(f"urn:uuid:{uuid.uuid4()}")))
    )
    assert dangling.status_code == 400


def test_processing_order_and_conditional_create(client):
    """DELETE, then POST, then PUT/PATCH, then GET, whatever the order in the bundle."""
    ident = f"ord-{uuid.uuid4().hex[:8]}"
    old = client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}).get_json()["id"]
    merge = base64.b64encode(json.dumps({"active": False}).encode()).decode()
    resp = post(
        client,
        bundle(
            "transaction",
            entry("GET", f"Patient?identifier=urn:o|{ident}"),
            entry("PUT", "Patient/put-made", {**patient(), "id": "put-made", "active": True}),
            entry(
                "PATCH",
                "Patient/put-made",
                {"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": merge},
            ),
            entry(
                "POST",
                "Patient",
                patient(identifier=[{"system": "urn:o", "value": ident}]),
                U1,
                ifNoneExist=f"identifier=urn:o|{ident}",
            ),
            entry("DELETE", f"Patient/{old}"),
        ),
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = resp.get_json()["entry"]
    assert [e["response"]["status"] for e in out] == [
        "200 OK",
        "201 Created",
        "200 OK",
        "201 Created",
        "204 No Content",
    ]
    assert len(out[0]["resource"]["entry"]) == 1  # the GET ran after the POST
    assert out[2]["resource"]["active"] is False and out[2]["response"]["etag"] == 'W/"2"'  # PATCH after PUT
    assert client.get(f"/fhir/R4/Patient/{old}").status_code == 410
    again = post(
        client,
        bundle(
            "transaction",
            entry(
                "POST",
                "Patient",
                patient(identifier=[{"system": "urn:o", "value": ident}]),
                U1,
                ifNoneExist=f"identifier=urn:o|{ident}",
            ),
        ),
    )
    assert again.get_json()["entry"][0]["response"]["status"] == "200 OK"  # nothing duplicated


def test_batch_entries_are_independent(client):
    resp = post(
        client,
        bundle(
            "batch",
            entry("POST", "Patient", patient()),
            entry("POST", "Observation", obs("Patient/x", valueQuantity="bad")),
            entry("GET", "Patient/does-not-exist"),
            entry("PUT", "Patient/batch-made", {**patient(), "id": "batch-made"}),
        ),
    )
    assert resp.status_code == 200
    out = resp.get_json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created" and statuses[1].startswith("400") and statuses[2].startswith("404")
    assert statuses[3] == "201 Created"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/R4/Patient/batch-made").status_code == 200


def test_entries_are_authorised_one_by_one(app):
    limited = authorized_client(app, scope="system/Patient.cu")
    body = bundle(
        "transaction", entry("POST", "Patient", patient()), entry("POST", "Observation", obs("Patient/x"))
    )
    resp = post(limited, body)
    assert resp.status_code == 403
    assert resp.get_json()["issue"][0]["diagnostics"].startswith("Bundle.entry[1]")
    body["type"] = "batch"
    out = post(limited, body).get_json()["entry"]
    assert out[0]["response"]["status"] == "201 Created" and out[1]["response"]["status"].startswith("403")


def test_limits_and_malformed_bundles(app, client):
    app.config["BUNDLE_MAX_ENTRIES"] = 2
    too_many = bundle("batch", *[entry("GET", "Patient/x")] * 3)
    resp = post(client, too_many)
    assert resp.status_code == 413 and "at most 2" in resp.get_json()["issue"][0]["diagnostics"]
    for body in (
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "collection"},
        bundle("transaction", {"resource": patient()}),
        bundle("transaction", entry("POST", "Patient", None)),
        bundle("transaction", entry("FETCH", "Patient")),
        bundle(
            "transaction", entry("POST", "Patient", patient(), U1), entry("POST", "Patient", patient(), U1)
        ),
    ):
        resp = post(client, body)
        assert resp.status_code == 400, (body, resp.get_data(as_text=True))
        assert resp.get_json()["resourceType"] == "OperationOutcome"


def _events(app, request_id: str) -> list[dict[str, Any]]:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        rows = conn.execute(
            text("SELECT body FROM audit_event WHERE body LIKE :r ORDER BY pos"), {"r": f"%{request_id}%"}
        )
        return [json.loads(b) for (b,) in rows]


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_each_entry_and_the_bundle_are_audited(app, client, kind):
    rid = f"tx-{uuid.uuid4().hex}"
    body = bundle(
        kind,
        entry("POST", "Patient", patient(), U1),
        entry("POST", "Observation", obs(U1 if kind == "transaction" else "Patient/x")),
        entry("GET", "Patient?_count=1"),
    )
    resp = post(client, body, **{"X-Request-Id": rid})
    assert resp.status_code == 200
    events = _events(app, rid)
    kinds = sorted((e["subtype"][0]["code"], e["action"]) for e in events)
    assert kinds == sorted([("create", "C"), ("create", "C"), ("search-type", "E"), (kind, "E")])
    (own,) = [e for e in events if e["subtype"][0]["code"] == kind]
    assert {d["type"]: d["valueString"] for e in own["entity"] for d in e.get("detail", [])}["entries"] == "3"


def test_validate_operation(client):
    good = client.post("/fhir/R4/Patient/$validate", json=patient(), headers={"Content-Type": FHIR})
    assert good.status_code == 200 and good.get_json()["issue"][0]["severity"] == "information"
    bad = client.post(
        "/fhir/R4/Patient/$validate", json=patient(birthDate="1990-13-01"), headers={"Content-Type": FHIR}
    )
    assert bad.status_code == 200
    issue = bad.get_json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.birthDate"]
    wrapped = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {**patient(), "id": "v1"}}],
    }
    inst = client.post("/fhir/R4/Patient/v1/$validate", json=wrapped, headers={"Content-Type": FHIR})
    assert inst.status_code == 200 and inst.get_json()["issue"][0]["severity"] == "information"
    assert client.get("/fhir/R4/Patient/v1").status_code == 404  # nothing stored
    other = client.post("/fhir/R4/Patient/v2/$validate", json=wrapped, headers={"Content-Type": FHIR})
    assert other.status_code == 400
    meta = client.get("/fhir/R4/metadata").get_json()["rest"][0]
    assert {
        "name": "validate",
        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    } in meta["operation"]
    assert {
        "name": "export",
        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    } in meta["operation"]
    assert {"code": "transaction"} in meta["interaction"] and {"code": "batch"} in meta["interaction"]
