"""Search on protected parameters through every path the engine has (modifiers, chains, _has, conditional
writes, compartments), each answer compared with the same search on the same data stored in clear."""

from __future__ import annotations

import pytest

from fhir_api import create_app
from tests.helpers import authorized_client, empty_tables
from tests.resources.search.fixtures import ids_of, put_all

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "ann",
        "name": [{"family": "Smith", "given": ["Ann", "Marie"]}],
        "birthDate": "1980-05-17",
        "identifier": [
            {"system": "urn:mrn", "value": "MRN-1", "type": {"coding": [{"system": V2, "code": "MR"}]}}
        ],
        "telecom": [{"system": "phone", "value": "555-0101"}, {"system": "email", "value": "ann@x.org"}],
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "use": "home"}],
    },
    {
        "resourceType": "Patient",
        "id": "bob",
        "name": [{"family": "Smithers", "given": ["Bob"]}],
        "birthDate": "1980",
        "identifier": [{"value": "MRN-2"}],
        "telecom": [{"system": "phone", "value": "555-0102"}],
        "address": [{"city": "Shelbyville", "use": "work"}],
    },
    {
        "resourceType": "Patient",
        "id": "cy",
        "name": [{"family": "Jones", "given": ["Cy"]}],
        "birthDate": "1975-12",
        "identifier": [{"system": "urn:mrn", "value": "MRN-3"}],
    },
    {"resourceType": "Patient", "id": "dee", "gender": "female"},
    {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Patient/ann"}},
    {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Patient/cy"}},
    {"resourceType": "ValueSet", "id": "mrns", "url": "urn:vs:mrns", "status": "active",
     "compose": {"include": [{"system": "urn:mrn", "concept": [{"code": "MRN-1"}, {"code": "MRN-3"}]}]}},
]  # fmt: skip

QUERIES = [
    "Patient?name=smi",
    "Patient?name=SMITH",
    "Patient?family:exact=Smith",
    "Patient?family:exact=smith",
    "Patient?given=ann,bob",
    "Patient?name=smith&given=bob",
    "Patient?name:missing=true",
    "Patient?name:missing=false",
    "Patient?birthdate=1980",
    "Patient?birthdate=1980-05",
    "Patient?birthdate=1980-05-17",
    "Patient?birthdate=ge1980-01-01",
    "Patient?birthdate=gt1980-05-17",
    "Patient?birthdate=lt1980-05-17",
    "Patient?birthdate=le1976",
    "Patient?birthdate=ne1980",
    "Patient?birthdate=sa1979",
    "Patient?birthdate=eb1980-06",
    "Patient?birthdate=ap1980-05-10",
    "Patient?birthdate=ge1975&birthdate=lt1980-06",
    "Patient?identifier=MRN-1",
    "Patient?identifier=urn:mrn|MRN-3",
    "Patient?identifier=|MRN-2",
    "Patient?identifier=urn:mrn|",
    "Patient?identifier:not=MRN-1",
    f"Patient?identifier:of-type={V2}|MR|MRN-1",
    "Patient?identifier:in=urn:vs:mrns",
    "Patient?identifier:not-in=urn:vs:mrns",
    "Patient?phone=555-0102",
    "Patient?telecom=email|ann@x.org",
    "Patient?email=ann@x.org",
    "Patient?address-city=spring",
    "Patient?address=main",
    "Patient?address-postalcode=123",
    "Patient?address-use=work",
    "Observation?subject.name=smith",
    "Observation?subject:Patient.birthdate=lt1980",
    "Patient?_has:Observation:subject:status=final&name=jones",
    "Patient?_id=ann,bob&family=smithers",
]


@pytest.fixture(scope="module")
def answers(database_url) -> dict[str, dict[str, list[str]]]:
    """Every query answered by a protected server and by a clear one over the same resources."""
    out: dict[str, dict[str, list[str]]] = {}
    for mode in ("protected", "clear"):
        empty_tables(database_url)
        app = create_app({"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": mode == "protected"})
        try:
            client = authorized_client(app)
            put_all(client, PATIENTS)
            for query in QUERIES:
                resp = client.get(f"/fhir/R4/{query}&_count=100")
                assert resp.status_code == 200, (mode, query, resp.get_data(as_text=True)[:300])
                out.setdefault(query, {})[mode] = sorted(ids_of(resp.get_json()))
        finally:
            app.extensions["fhir_db"]["engine"].dispose()
            empty_tables(database_url)
    return out


@pytest.mark.parametrize("query", QUERIES)
def test_protected_search_answers_as_clear_search(answers, query):
    got = answers[query]
    assert got["protected"] == got["clear"], query


def test_the_queries_find_something(answers):
    assert sum(1 for q in QUERIES if answers[q]["clear"]) >= len(QUERIES) - 2


@pytest.mark.parametrize(
    "query",
    [
        "Patient?name:contains=mit",
        "Patient?address:contains=spring",
        "Patient?identifier:text=medical",
        "Patient?_sort=birthdate",
        "Patient?_sort=-family",
        "Observation?subject.name:contains=mit",
    ],
)
def test_what_blind_indexes_cannot_serve_is_refused(client, query):
    resp = client.get(f"/fhir/R4/{query}")
    assert resp.status_code == 400
    issue = resp.get_json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "protected-search"
    assert "protected" in issue["diagnostics"] or "encrypted" in issue["diagnostics"]


def test_conditional_create_and_update_find_protected_identifiers(client):
    put_all(client, PATIENTS[:1])
    again = client.post(
        "/fhir/R4/Patient",
        json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "MRN-1"}]},
        headers={"If-None-Exist": "identifier=urn:mrn|MRN-1"},
    )
    assert again.status_code == 200  # found, not created
    updated = client.put(
        "/fhir/R4/Patient?identifier=urn:mrn|MRN-1",
        json={"resourceType": "Patient", "id": "ann", "name": [{"family": "Smyth"}]},
    )
    assert updated.status_code == 200
    found = client.get("/fhir/R4/Patient?family=smyth").get_json()
    assert ids_of(found) == ["ann"]
    assert ids_of(client.get("/fhir/R4/Patient?family=smith").get_json()) == []  # old rows replaced


def test_delete_removes_blind_rows(client):
    put_all(client, PATIENTS[:2])
    assert client.delete("/fhir/R4/Patient/ann").status_code in (200, 204)
    assert ids_of(client.get("/fhir/R4/Patient?name=smi").get_json()) == ["bob"]


def test_capability_statement_says_which_parameters_are_protected(anonymous):
    rest = anonymous.get("/fhir/R4/metadata").get_json()["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    params = {p["name"]: p for p in patient["searchParam"]}
    assert "Protected" in params["name"]["documentation"] and ":contains" in params["name"]["documentation"]
    assert "Protected" in params["birthdate"]["documentation"]
    assert "documentation" not in params["gender"]
