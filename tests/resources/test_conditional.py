"""Conditional create, update and delete (http://hl7.org/fhir/R4/http.html#ccreate), incl. racing creates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import FHIR, authorized_client, created_id, issue, patient

MRN = "http://hospital.example.org/mrn"


def _with_mrn(value: str, **fields):
    return patient(identifier=[{"system": MRN, "value": value}], **fields)


def _count(client, query: str) -> int:
    return client.get(f"/fhir/R4/Patient?{query}&_total=accurate").get_json()["total"]


def test_if_none_exist_creates_then_returns_the_match(client):
    headers = {"If-None-Exist": f"identifier={MRN}|A1"}
    first = client.post("/fhir/R4/Patient", json=_with_mrn("A1"), headers=headers)
    assert first.status_code == 201
    second = client.post("/fhir/R4/Patient", json=_with_mrn("A1", gender="male"), headers=headers)
    assert second.status_code == 200
    assert created_id(second) == created_id(first)
    assert second.get_json()["meta"]["versionId"] == "1"  # untouched
    assert _count(client, f"identifier={MRN}|A1") == 1


def test_conditional_create_in_the_url_as_fhirpy_sends_it(client):
    url = f"/fhir/R4/Patient?identifier={MRN}|B1"
    assert client.post(url, json=_with_mrn("B1"), content_type="application/json").status_code == 201
    assert client.post(url, json=_with_mrn("B1"), content_type="application/json").status_code == 200


def test_conditional_create_several_matches_412(client):
    client.post("/fhir/R4/Patient", json=patient(name=[{"family": "Same"}]))
    client.post("/fhir/R4/Patient", json=patient(name=[{"family": "Same"}]))
    resp = client.post("/fhir/R4/Patient", json=patient(), headers={"If-None-Exist": "family=Same"})
    assert resp.status_code == 412
    assert issue(resp)["code"] == "conflict"


def test_conditional_create_unknown_parameter_is_an_error_not_ignored(client):
    resp = client.post("/fhir/R4/Patient", json=patient(), headers={"If-None-Exist": "nonsense=1"})
    assert resp.status_code == 400
    assert _count(client, "_id:missing=false") == 0


def test_racing_conditional_creates_leave_one_resource(app, client):
    headers = {"If-None-Exist": f"identifier={MRN}|RACE", "Content-Type": FHIR}

    def post(_: int) -> int:
        with authorized_client(app) as c:
            return c.post("/fhir/R4/Patient", json=_with_mrn("RACE"), headers=headers).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, range(12)))
    assert sorted(statuses).count(201) == 1, statuses
    assert set(statuses) == {200, 201}
    assert _count(client, f"identifier={MRN}|RACE") == 1


def test_conditional_update(client):
    resp = client.put(f"/fhir/R4/Patient?identifier={MRN}|C1", json=_with_mrn("C1"))
    assert resp.status_code == 201  # no match, no id: created
    rid = created_id(resp)
    resp = client.put(f"/fhir/R4/Patient?identifier={MRN}|C1", json=_with_mrn("C1", gender="female"))
    assert resp.status_code == 200 and created_id(resp) == rid
    assert resp.get_json()["meta"]["versionId"] == "2" and resp.get_json()["gender"] == "female"
    wrong_id = _with_mrn("C1", id="someone-else")
    assert client.put(f"/fhir/R4/Patient?identifier={MRN}|C1", json=wrong_id).status_code == 400
    client.post("/fhir/R4/Patient", json=_with_mrn("C1"))
    assert client.put(f"/fhir/R4/Patient?identifier={MRN}|C1", json=_with_mrn("C1")).status_code == 412
    resp = client.put(f"/fhir/R4/Patient?identifier={MRN}|C9", json=_with_mrn("C9", id="chosen-c9"))
    assert resp.status_code == 201 and created_id(resp) == "chosen-c9"


def test_conditional_delete_single_and_multiple(app, client):
    for value in ("D1", "D2", "D2"):
        client.post("/fhir/R4/Patient", json=_with_mrn(value))
    assert client.delete(f"/fhir/R4/Patient?identifier={MRN}|D1").status_code == 200
    assert _count(client, f"identifier={MRN}|D1") == 0
    assert client.delete(f"/fhir/R4/Patient?identifier={MRN}|D1").status_code == 404
    assert client.delete(f"/fhir/R4/Patient?identifier={MRN}|D2").status_code == 412
    app.config["CONDITIONAL_DELETE_MULTIPLE"] = True
    resp = client.delete(f"/fhir/R4/Patient?identifier={MRN}|D2")
    assert resp.status_code == 200
    assert _count(client, f"identifier={MRN}|D2") == 0
    assert client.delete("/fhir/R4/Patient").status_code == 400  # no criteria: never "delete everything"


@pytest.mark.parametrize("method", ["put", "delete"])
def test_conditional_without_criteria_is_refused(client, method):
    kwargs = {"json": patient()} if method == "put" else {}
    assert getattr(client, method)("/fhir/R4/Patient", **kwargs).status_code == 400
