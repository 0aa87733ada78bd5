"""create / read / vread / update / patch / delete through HTTP, per http://hl7.org/fhir/R4/http.html."""

from __future__ import annotations

import simplejson

from tests.helpers import FHIR, create, created_id, issue, patient


def test_create_returns_201_location_etag_last_modified(client):
    resp = create(client, patient())
    rid = created_id(resp)
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.headers["Location"].endswith(f"/fhir/R4/Patient/{rid}/_history/1")
    assert resp.headers["Last-Modified"].endswith("GMT")
    body = resp.get_json(force=True)
    assert body["id"] == rid
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    assert resp.headers["Cache-Control"] == "no-store"


def test_create_ignores_client_id_and_keeps_other_meta(client):
    resp = create(client, patient(id="mine", meta={"versionId": "9", "tag": [{"code": "t"}]}))
    body = resp.get_json(force=True)
    assert body["id"] != "mine"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["tag"] == [{"code": "t"}]


def test_create_accepts_plain_application_json(client):
    resp = client.post("/fhir/R4/Patient", data=simplejson.dumps(patient()), content_type="application/json")
    assert resp.status_code == 201


def test_prefer_return_minimal_and_operation_outcome(client):
    resp = client.post("/fhir/R4/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert resp.status_code == 201 and resp.data == b"" and "Location" in resp.headers
    resp = client.post("/fhir/R4/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert resp.status_code == 201
    assert issue(resp)["severity"] == "information"


def test_body_is_stored_as_sent_decimals_and_timestamps(client):
    raw = (
        '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        '"effectiveDateTime":"2024-01-02T03:04:05.356+00:00",'
        '"valueQuantity":{"value":1.50,"unit":"mg"},'
        '"extension":[{"url":"http://e","valueDecimal":0.100}]}'
    )
    resp = client.post("/fhir/R4/Observation", data=raw, content_type=FHIR)
    assert resp.status_code == 201
    rid = created_id(resp)
    text = client.get(f"/fhir/R4/Observation/{rid}").get_data(as_text=True)
    assert '"value":1.50' in text
    assert '"valueDecimal":0.100' in text
    assert '"effectiveDateTime":"2024-01-02T03:04:05.356+00:00"' in text


def test_read_unknown_404_and_vread(client):
    resp = client.get("/fhir/R4/Patient/nope")
    assert resp.status_code == 404
    assert issue(resp)["code"] == "not-found"
    rid = created_id(create(client, patient()))
    resp = client.get(f"/fhir/R4/Patient/{rid}/_history/1")
    assert resp.status_code == 200 and resp.headers["ETag"] == 'W/"1"'
    assert client.get(f"/fhir/R4/Patient/{rid}/_history/2").status_code == 404
    assert client.get(f"/fhir/R4/Patient/{rid}/_history/x").status_code == 404


def test_conditional_read_304(client):
    resp = create(client, patient())
    rid = created_id(resp)
    url = f"/fhir/R4/Patient/{rid}"
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"2"'}).status_code == 200
    lm = resp.headers["Last-Modified"]
    assert client.get(url, headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert client.get(f"{url}/_history/1", headers={"If-None-Match": 'W/"1"'}).status_code == 304


def test_update_creates_new_version(client):
    rid = created_id(create(client, patient()))
    resp = client.put(f"/fhir/R4/Patient/{rid}", json=patient(id=rid, gender="female"))
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"2"'
    assert resp.get_json(force=True)["gender"] == "female"
    assert client.get(f"/fhir/R4/Patient/{rid}/_history/1").get_json(force=True).get("gender") is None


def test_update_if_match(client):
    rid = created_id(create(client, patient()))
    url = f"/fhir/R4/Patient/{rid}"
    resp = client.put(url, json=patient(id=rid), headers={"If-Match": 'W/"5"'})
    assert resp.status_code == 412
    assert issue(resp)["code"] == "conflict"
    assert client.put(url, json=patient(id=rid), headers={"If-Match": 'W/"1"'}).status_code == 200
    assert client.put(url, json=patient(id=rid), headers={"If-Match": "bogus"}).status_code == 400
    assert (
        client.put(
            "/fhir/R4/Patient/new1", json=patient(id="new1"), headers={"If-Match": 'W/"1"'}
        ).status_code
        == 412
    )


def test_update_id_mismatch_and_missing(client):
    rid = created_id(create(client, patient()))
    resp = client.put(f"/fhir/R4/Patient/{rid}", json=patient(id="other"))
    assert resp.status_code == 400
    assert issue(resp)["expression"] == ["Patient.id"]
    assert client.put(f"/fhir/R4/Patient/{rid}", json=patient()).status_code == 400


def test_update_as_create_and_disabled(client, app):
    resp = client.put("/fhir/R4/Patient/client-chosen", json=patient(id="client-chosen"))
    assert resp.status_code == 201
    assert resp.headers["ETag"] == 'W/"1"'
    assert client.get("/fhir/R4/Patient/client-chosen").status_code == 200
    app.config["UPDATE_CREATE"] = False
    resp = client.put("/fhir/R4/Patient/other-id", json=patient(id="other-id"))
    assert resp.status_code == 404
    assert client.get("/fhir/R4/metadata").get_json()["rest"][0]["resource"][0]["updateCreate"] is False


def test_json_patch_revalidated_and_if_match(client):
    rid = created_id(create(client, patient()))
    url = f"/fhir/R4/Patient/{rid}"
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    resp = client.patch(url, json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["ETag"] == 'W/"2"'
    assert resp.get_json(force=True)["gender"] == "male"
    bad = [{"op": "add", "path": "/birthDate", "value": "not-a-date"}]
    resp = client.patch(url, json=bad, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 400
    assert issue(resp)["expression"] == ["Patient.birthDate"]
    resp = client.patch(
        url, json=ops, headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}
    )
    assert resp.status_code == 412
    failing = [{"op": "test", "path": "/gender", "value": "female"}]
    resp = client.patch(url, json=failing, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 422
    resp = client.patch(
        url,
        json=[{"op": "replace", "path": "/id", "value": "x"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert resp.status_code == 400
    resp = client.patch(url, json={"op": "nonsense"}, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 400
    assert client.get(url).headers["ETag"] == 'W/"2"'  # failed patches wrote nothing


def test_merge_patch_as_fhirpy_sends_it(client):
    rid = created_id(create(client, patient(gender="male")))
    url = f"/fhir/R4/Patient/{rid}"
    resp = client.patch(url, json={"gender": "female", "active": True}, content_type="application/json")
    assert resp.status_code == 200
    body = resp.get_json(force=True)
    assert body["gender"] == "female" and body["active"] is True and body["name"][0]["family"] == "Test"
    resp = client.patch(url, json={"active": None}, content_type="application/merge-patch+json")
    assert "active" not in resp.get_json(force=True)


def test_patch_unknown_and_deleted(client):
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    hdr = {"Content-Type": "application/json-patch+json"}
    assert client.patch("/fhir/R4/Patient/none", json=ops, headers=hdr).status_code == 404
    rid = created_id(create(client, patient()))
    client.delete(f"/fhir/R4/Patient/{rid}")
    assert client.patch(f"/fhir/R4/Patient/{rid}", json=ops, headers=hdr).status_code == 410


def test_delete_is_logical_and_idempotent(client):
    rid = created_id(create(client, patient()))
    url = f"/fhir/R4/Patient/{rid}"
    resp = client.delete(url)
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"2"'
    resp = client.get(url)
    assert resp.status_code == 410
    assert issue(resp)["code"] == "deleted"
    assert client.delete(url).status_code == 200
    assert client.delete(url).headers["ETag"] == 'W/"2"'  # no new version
    assert client.get(f"{url}/_history/1").status_code == 200
    assert client.get(f"{url}/_history/2").status_code == 410
    assert client.delete("/fhir/R4/Patient/never").status_code == 404
    # update after delete brings it back as a new version
    resp = client.put(url, json=patient(id=rid))
    assert resp.status_code == 200 and resp.headers["ETag"] == 'W/"3"'


def test_every_r4b_type_is_served_generically(client):
    resp = create(client, {"resourceType": "Basic", "code": {"text": "b"}})
    assert client.get(f"/fhir/R4/Basic/{created_id(resp)}").status_code == 200
    resp = create(client, {"resourceType": "Organization", "name": "Org"})
    assert client.get(f"/fhir/R4/Organization/{created_id(resp)}").status_code == 200


def test_read_with_summary_and_elements(client):
    rid = created_id(create(client, patient(gender="male", photo=[{"contentType": "image/png"}])))
    body = client.get(f"/fhir/R4/Patient/{rid}?_summary=true").get_json()
    assert "photo" not in body and body["gender"] == "male"
    assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])
    body = client.get(f"/fhir/R4/Patient/{rid}/_history/1?_elements=gender").get_json()
    assert "name" not in body and body["gender"] == "male"
    assert client.get(f"/fhir/R4/Patient/{rid}?_summary=bogus").status_code == 400


def test_a_number_where_a_url_belongs_is_400_not_500(client):
    """fhir_core's url validator raises AttributeError on a number (found through Subscription.channel)."""
    body = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "hl7-fhir-rest"},
        "payloadType": [{"text": "any"}],
        "address": 5,
    }
    resp = client.post("/fhir/R4/Endpoint", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["resourceType"] == "OperationOutcome"
