"""Broken object level authorization, across every access path, for patient, insurer, auditor and
v2-constraint tokens: one small population, and for each token exactly what each interaction may reveal.

Population: patients A and B; a laboratory and a vital-signs Observation of each; an Encounter of each;
Practitioner P; insurers INS and OTHER; Coverage of A paid by INS, a second Coverage of A paid by OTHER (the
insurer must not learn of it), Coverage of B paid by OTHER; a Claim for A and a Claim for B.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import FHIR, authorized_client

LAB_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
GLUCOSE = "2345-7"
HEART_RATE = "8867-4"

PATIENT = {"role": "patient", "scope": "patient/*.rs", "patient": "A"}
INSURER = {
    "role": "insurer",
    "scope": "system/Patient.rs system/Coverage.rs system/Claim.rs system/ClaimResponse.rs "
    "system/ExplanationOfBenefit.rs",
    "organization": "INS",
}
AUDITOR = {"role": "auditor", "scope": "system/AuditEvent.rs"}
LAB_ONLY = {"scope": "system/Observation.rs?category=laboratory"}  # clinical-system with a v2 constraint
TOKENS = {"patient": PATIENT, "insurer": INSURER, "auditor": AUDITOR, "lab": LAB_ONLY}


# -- the population ------------------------------------------------------------------------------------------
def _patient(pid: str, family: str, given: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}]}


def _observation(oid: str, pid: str, category: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": LAB_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/enc-{pid.lower()}"},
        "performer": [{"reference": "Practitioner/P"}],
        "valueQuantity": {"value": value, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
    }


def _encounter(eid: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"individual": {"reference": "Practitioner/P"}}],
    }


def _coverage(cid: str, pid: str, payor: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": cid,
        "status": "active",
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"reference": f"Organization/{payor}"}],
    }


def _claim(cid: str, pid: str, insurer: str, coverage: str) -> dict[str, Any]:
    return {
        "resourceType": "Claim",
        "id": cid,
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{pid}"},
        "created": "2024-03-01",
        "provider": {"reference": "Practitioner/P"},
        "insurer": {"reference": f"Organization/{insurer}"},
        "priority": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]
        },
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{coverage}"}}],
    }


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Practitioner", "id": "P", "name": [{"family": "Papadopoulos"}]},
    {"resourceType": "Organization", "id": "INS", "name": "Insurer INS"},
    {"resourceType": "Organization", "id": "OTHER", "name": "Insurer OTHER"},
    _patient("A", "Alpha", "Ann"),
    _patient("B", "Bravo", "Bob"),
    _encounter("enc-a", "A"),
    _encounter("enc-b", "B"),
    _observation("obs-a-lab", "A", "laboratory", GLUCOSE, 5.4),
    _observation("obs-a-vital", "A", "vital-signs", HEART_RATE, 61),
    _observation("obs-b-lab", "B", "laboratory", GLUCOSE, 9.9),
    _observation("obs-b-vital", "B", "vital-signs", HEART_RATE, 99),
    _coverage("cov-a", "A", "INS"),
    _coverage("cov-a-other", "A", "OTHER"),
    _coverage("cov-b", "B", "OTHER"),
    _claim("claim-a", "A", "INS", "cov-a"),
    _claim("claim-b", "B", "OTHER", "cov-b"),
]
EVERYTHING = frozenset(f"{r['resourceType']}/{r['id']}" for r in RESOURCES)
TYPES = sorted({r["resourceType"] for r in RESOURCES})

VISIBLE: dict[str, frozenset[str]] = {
    # the Patient compartment of A (Practitioner and Organization are not members of any Patient compartment)
    "patient": frozenset(
        {
            "Patient/A",
            "Encounter/enc-a",
            "Observation/obs-a-lab",
            "Observation/obs-a-vital",
            "Coverage/cov-a",
            "Coverage/cov-a-other",
            "Claim/claim-a",
        }
    ),
    # INS's member A, A's Claim, and of Coverage only INS's own
    "insurer": frozenset({"Patient/A", "Coverage/cov-a", "Claim/claim-a"}),
    "auditor": frozenset(),
    # every patient's laboratory Observations, nothing else
    "lab": frozenset({"Observation/obs-a-lab", "Observation/obs-b-lab"}),
}
# Types whose interactions the token's scopes allow at all (others are 403 before any data is touched).
PERMITTED: dict[str, frozenset[str] | None] = {
    "patient": None,  # patient/*.rs: every type, narrowed to A's compartment
    "insurer": frozenset({"Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit"}),
    "auditor": frozenset({"AuditEvent"}),
    "lab": frozenset({"Observation"}),
}


@pytest.fixture
def population(client) -> None:
    for body in RESOURCES:
        resp = client.put(
            f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers={"Content-Type": FHIR}
        )
        assert resp.status_code == 201, resp.get_data(as_text=True)


def as_token(app, kind: str):
    return authorized_client(app, **TOKENS[kind])


def permitted(kind: str, res_type: str) -> bool:
    allowed = PERMITTED[kind]
    return allowed is None or res_type in allowed


def ids(resp, mode: str | None = "match") -> set[str]:
    """Type/id of a searchset's entries of one search mode (all modes when None), or a history's entries."""
    assert resp.status_code == 200, resp.get_data(as_text=True)
    bundle = resp.get_json()
    assert bundle["resourceType"] == "Bundle"
    found = set()
    for entry in bundle.get("entry", []):
        if mode is not None and entry.get("search", {}).get("mode", mode) != mode:
            continue
        if entry.get("search", {}).get("mode") == "outcome":
            continue
        found.add(entry["fullUrl"].removeprefix("http://localhost/fhir/R4/"))
    return found


def of_type(names: frozenset[str] | set[str], *types: str) -> set[str]:
    return {n for n in names if n.split("/")[0] in types}


def assert_forbidden(resp) -> None:
    assert resp.status_code == 403, resp.get_data(as_text=True)
    assert resp.get_json()["issue"][0]["code"] == "forbidden"


def assert_not_found(resp) -> None:
    assert resp.status_code == 404, resp.get_data(as_text=True)
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def assert_untouched(client) -> None:
    """Every resource of the population is still there, at version 1, and nothing else was written."""
    resp = client.get("/fhir/R4/_history", query_string={"_count": "100"})
    entries = resp.get_json()["entry"]
    assert sorted(e["fullUrl"].removeprefix("http://localhost/fhir/R4/") for e in entries) == sorted(
        EVERYTHING
    )
    assert {e["response"]["etag"] for e in entries} == {'W/"1"'}


# -- read, vread, instance history ---------------------------------------------------------------------------
def _expected_instance_status(kind: str, name: str) -> int:
    if not permitted(kind, name.split("/")[0]):
        return 403
    return 200 if name in VISIBLE[kind] else 404


@pytest.mark.parametrize("kind", list(TOKENS))
def test_read_vread_and_instance_history(app, client, population, kind):
    http = as_token(app, kind)
    for name in sorted(EVERYTHING):
        expected = _expected_instance_status(kind, name)
        for path in (f"/fhir/R4/{name}", f"/fhir/R4/{name}/_history/1", f"/fhir/R4/{name}/_history"):
            resp = http.get(path)
            assert resp.status_code == expected, (kind, path, resp.get_data(as_text=True))
            if expected == 200 and not path.endswith("/_history"):
                assert resp.get_json()["id"] == name.split("/")[1]
            if expected == 200 and path.endswith("/_history"):
                assert ids(resp) == {name}


@pytest.mark.parametrize("kind", list(TOKENS))
def test_unknown_and_hidden_instances_are_indistinguishable(app, population, kind):
    """A hidden resource reads exactly like one that does not exist (status, headers and outcome)."""
    http = as_token(app, kind)
    hidden = sorted(n for n in EVERYTHING - VISIBLE[kind] if permitted(kind, n.split("/")[0]))
    assert hidden or kind == "auditor"
    for name in hidden:
        res_type = name.split("/")[0]
        for suffix in ("", "/_history", "/_history/2"):
            a = http.get(f"/fhir/R4/{name}{suffix}")
            b = http.get(f"/fhir/R4/{res_type}/does-not-exist{suffix}")
            assert a.status_code == b.status_code == 404
            assert "ETag" not in a.headers
            assert a.get_data(as_text=True).replace(name, f"{res_type}/X") == b.get_data(
                as_text=True
            ).replace(f"{res_type}/does-not-exist", f"{res_type}/X")
        a = http.get(f"/fhir/R4/{name}/_history/1")  # vread of an existing version
        assert a.status_code == 404
        assert "ETag" not in a.headers


@pytest.mark.parametrize("kind", ["patient", "insurer", "lab"])
def test_vread_of_hidden_instances_is_indistinguishable(app, population, kind):
    http = as_token(app, kind)
    hidden = sorted(n for n in EVERYTHING - VISIBLE[kind] if permitted(kind, n.split("/")[0]))
    for name in hidden:
        res_type = name.split("/")[0]
        a = http.get(f"/fhir/R4/{name}/_history/1")
        b = http.get(f"/fhir/R4/{res_type}/does-not-exist/_history/1")
        assert a.get_data(as_text=True).replace(name, f"{res_type}/X") == b.get_data(as_text=True).replace(
            f"{res_type}/does-not-exist", f"{res_type}/X"
        )


def test_patient_token_on_practitioner_and_organization(app, population):
    """Practitioner and Organization are not members of the Patient compartment, so under patient/*.rs
    (which permits every type) the compartment restriction reaches none of them: searches are empty and
    reads 404, not 403 (resources/access.py: _in_patient_compartment returns false() for non-members)."""
    http = as_token(app, "patient")
    assert ids(http.get("/fhir/R4/Practitioner", query_string={"_total": "accurate"})) == set()
    assert http.get("/fhir/R4/Practitioner", query_string={"_total": "accurate"}).get_json()["total"] == 0
    assert_not_found(http.get("/fhir/R4/Practitioner/P"))
    assert ids(http.get("/fhir/R4/Organization")) == set()
    assert_not_found(http.get("/fhir/R4/Organization/INS"))


# -- searches ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(TOKENS))
def test_type_search_and_accurate_totals(app, population, kind):
    http = as_token(app, kind)
    for res_type in TYPES:
        for method in ("GET", "POST"):
            if method == "GET":
                resp = http.get(f"/fhir/R4/{res_type}", query_string={"_total": "accurate"})
            else:
                resp = http.post(f"/fhir/R4/{res_type}/_search", data={"_total": "accurate"})
            if not permitted(kind, res_type):
                assert_forbidden(resp)
                continue
            expected = of_type(VISIBLE[kind], res_type)
            assert ids(resp) == expected, (kind, res_type, method)
            assert resp.get_json()["total"] == len(expected), (kind, res_type, method)
        if permitted(kind, res_type):
            count = http.get(f"/fhir/R4/{res_type}", query_string={"_summary": "count"})
            assert count.get_json()["total"] == len(of_type(VISIBLE[kind], res_type))


@pytest.mark.parametrize("kind", list(TOKENS))
def test_searching_for_hidden_resources_directly(app, population, kind):
    """Naming B's resources in search parameters finds nothing that is hidden."""
    http = as_token(app, kind)
    queries = [
        ("Observation", {"subject": "Patient/B"}),
        ("Observation", {"patient": "B"}),
        ("Observation", {"_id": "obs-b-lab,obs-b-vital"}),
        ("Patient", {"_id": "B"}),
        ("Patient", {"name": "Bravo"}),
        ("Claim", {"patient": "Patient/B"}),
        ("Coverage", {"beneficiary": "Patient/B"}),
        ("Coverage", {"payor": "Organization/OTHER"}),
        ("Encounter", {"subject": "B"}),
    ]
    for res_type, params in queries:
        resp = http.get(f"/fhir/R4/{res_type}", query_string={**params, "_total": "accurate"})
        if not permitted(kind, res_type):
            assert_forbidden(resp)
            continue
        found = ids(resp)
        assert found <= VISIBLE[kind], (kind, res_type, params, found)
        assert resp.get_json()["total"] == len(found)
    if kind == "lab":  # the lab token sees B's laboratory result, and only that
        assert ids(http.get("/fhir/R4/Observation", query_string={"subject": "Patient/B"})) == {
            "Observation/obs-b-lab"
        }
        assert ids(http.get("/fhir/R4/Observation", query_string={"category": "vital-signs"})) == set()


@pytest.mark.parametrize("kind", list(TOKENS))
def test_system_search(app, population, kind):
    http = as_token(app, kind)
    resp = http.get("/fhir/R4", query_string={"_total": "accurate", "_count": "100"})
    assert ids(resp) == VISIBLE[kind]
    assert resp.get_json()["total"] == len(VISIBLE[kind])

    resp = http.get("/fhir/R4", query_string={"_type": "Observation,Patient", "_total": "accurate"})
    # A type named in _type that the token may not search is left out silently (200), not refused with 403:
    # the guard only checks that some type is searchable (resources/search/results.py skips the others).
    assert ids(resp) == of_type(VISIBLE[kind], "Observation", "Patient")
    assert resp.get_json()["total"] == len(of_type(VISIBLE[kind], "Observation", "Patient"))

    resp = http.post("/fhir/R4/_search", data={"_type": "Observation", "_id": "obs-b-lab,obs-a-lab"})
    assert ids(resp) == VISIBLE[kind] & {"Observation/obs-b-lab", "Observation/obs-a-lab"}


@pytest.mark.parametrize("kind", list(TOKENS))
def test_type_and_system_history(app, population, kind):
    http = as_token(app, kind)
    assert ids(http.get("/fhir/R4/_history", query_string={"_count": "100"})) == VISIBLE[kind]
    for res_type in TYPES:
        resp = http.get(f"/fhir/R4/{res_type}/_history")
        if not permitted(kind, res_type):
            assert_forbidden(resp)
        else:
            assert ids(resp) == of_type(VISIBLE[kind], res_type), (kind, res_type)


@pytest.mark.parametrize(
    ("kind", "path", "expected"),
    [
        ("patient", "/fhir/R4/Patient/B/Observation", set()),
        ("patient", "/fhir/R4/Patient/B/Encounter", set()),
        ("patient", "/fhir/R4/Patient/B/Claim", set()),
        ("patient", "/fhir/R4/Patient/A/Observation", {"Observation/obs-a-lab", "Observation/obs-a-vital"}),
        ("patient", "/fhir/R4/Patient/A/Coverage", {"Coverage/cov-a", "Coverage/cov-a-other"}),
        ("insurer", "/fhir/R4/Patient/B/Claim", set()),
        ("insurer", "/fhir/R4/Patient/B/Coverage", set()),
        ("insurer", "/fhir/R4/Patient/A/Claim", {"Claim/claim-a"}),
        ("insurer", "/fhir/R4/Patient/A/Coverage", {"Coverage/cov-a"}),
        ("insurer", "/fhir/R4/Patient/B/Observation", 403),
        ("insurer", "/fhir/R4/Patient/A/Observation", 403),
        ("insurer", "/fhir/R4/Patient/A/Encounter", 403),
        ("auditor", "/fhir/R4/Patient/B/Observation", 403),
        ("auditor", "/fhir/R4/Patient/A/Claim", 403),
        ("lab", "/fhir/R4/Patient/B/Observation", {"Observation/obs-b-lab"}),
        ("lab", "/fhir/R4/Patient/A/Observation", {"Observation/obs-a-lab"}),
        ("lab", "/fhir/R4/Patient/A/Encounter", 403),
    ],
)
def test_compartment_search(app, population, kind, path, expected):
    resp = as_token(app, kind).get(path, query_string={"_total": "accurate"})
    if expected == 403:
        assert_forbidden(resp)
    else:
        assert ids(resp) == expected
        assert resp.get_json()["total"] == len(expected)


@pytest.mark.parametrize(
    ("kind", "query", "expected"),
    [
        ("patient", "Observation?subject.name=Bravo", set()),
        ("patient", "Observation?subject:Patient.name=Bravo", set()),
        ("patient", "Observation?subject.name=Alpha", {"Observation/obs-a-lab", "Observation/obs-a-vital"}),
        ("patient", "Claim?patient.name=Bravo", set()),
        ("patient", "Observation?encounter.subject=Patient/B", set()),
        ("insurer", "Claim?patient.name=Bravo", set()),
        ("insurer", "Claim?patient.name=Alpha", {"Claim/claim-a"}),
        ("insurer", "Coverage?beneficiary.name=Alpha", {"Coverage/cov-a"}),
        ("insurer", "Observation?subject.name=Bravo", 403),
        ("auditor", "Observation?subject.name=Bravo", 403),
        # the lab token reads no Patient, so it may not filter on a Patient's name either (an oracle)
        ("lab", "Observation?subject.name=Alpha", set()),
    ],
)
def test_chained_search(app, population, kind, query, expected):
    path, _, params = query.partition("?")
    resp = as_token(app, kind).get(f"/fhir/R4/{path}?{params}&_total=accurate")
    if expected == 403:
        assert_forbidden(resp)
    else:
        assert ids(resp) == expected
        assert resp.get_json()["total"] == len(expected)


@pytest.mark.parametrize(
    ("kind", "unreadable", "param", "real"),
    [
        ("lab", "Patient/B", "subject.name", "Bravo"),
        ("patient", "Practitioner/P", "performer.name", "Papadopoulos"),
        ("insurer", "Practitioner/P", "provider.name", "Papadopoulos"),
    ],
)
def test_chain_through_an_unreadable_resource_is_no_oracle(app, population, kind, unreadable, param, real):
    http = as_token(app, kind)
    assert http.get(f"/fhir/R4/{unreadable}").status_code in (403, 404)  # the token cannot read it...
    res_type = "Claim" if param.startswith("provider") else "Observation"
    found = http.get(f"/fhir/R4/{res_type}", query_string={param: real})
    bogus = http.get(f"/fhir/R4/{res_type}", query_string={param: "Nobody-At-All"})
    # ...so filtering on its name must not tell a real name from a made-up one
    assert (found.status_code, ids(found) if found.status_code == 200 else None) == (
        bogus.status_code,
        ids(bogus) if bogus.status_code == 200 else None,
    )


@pytest.mark.parametrize(
    ("kind", "query", "matches", "included"),
    [
        (
            "patient",
            "Observation?_include=Observation:subject",
            {"Observation/obs-a-lab", "Observation/obs-a-vital"},
            {"Patient/A"},
        ),
        # P is referenced by A's Observations but is outside the compartment: not included
        (
            "patient",
            "Observation?_include=Observation:performer&_include=Observation:encounter",
            {"Observation/obs-a-lab", "Observation/obs-a-vital"},
            {"Encounter/enc-a"},
        ),
        (
            "patient",
            "Observation?_include=*",
            {"Observation/obs-a-lab", "Observation/obs-a-vital"},
            {"Patient/A", "Encounter/enc-a"},
        ),
        (
            "patient",
            "Claim?_include=Claim:insurer&_include=Claim:provider&_include=Claim:patient",
            {"Claim/claim-a"},
            {"Patient/A"},
        ),
        ("insurer", "Claim?_include=Claim:patient", {"Claim/claim-a"}, {"Patient/A"}),
        # Organization (even INS itself) and Practitioner are outside the insurer's types
        ("insurer", "Claim?_include=*", {"Claim/claim-a"}, {"Patient/A"}),
        ("insurer", "Coverage?_include=Coverage:payor", {"Coverage/cov-a"}, set()),
        (
            "lab",
            "Observation?_include=Observation:subject&_include=Observation:encounter",
            {"Observation/obs-a-lab", "Observation/obs-b-lab"},
            set(),
        ),
        (
            "patient",
            "Patient?_revinclude=Observation:subject",
            {"Patient/A"},
            {"Observation/obs-a-lab", "Observation/obs-a-vital"},
        ),
        (
            "patient",
            "Patient?_revinclude=*",
            {"Patient/A"},
            {
                "Observation/obs-a-lab",
                "Observation/obs-a-vital",
                "Encounter/enc-a",
                "Coverage/cov-a",
                "Coverage/cov-a-other",
                "Claim/claim-a",
            },
        ),
        # reverse includes from B's side reach nothing of B
        ("patient", "Practitioner?_revinclude=Observation:performer", set(), set()),
        ("insurer", "Patient?_revinclude=Observation:subject", {"Patient/A"}, set()),
        ("insurer", "Patient?_revinclude=Coverage:beneficiary", {"Patient/A"}, {"Coverage/cov-a"}),
        ("insurer", "Patient?_revinclude=*", {"Patient/A"}, {"Coverage/cov-a", "Claim/claim-a"}),
        (
            "insurer",
            "Coverage?_include=Coverage:beneficiary&_include=Coverage:payor&_revinclude=Claim:patient",
            {"Coverage/cov-a"},
            {"Patient/A"},
        ),
        ("lab", "Patient?_revinclude=Observation:subject", 403, None),
        ("auditor", "Observation?_include=Observation:subject", 403, None),
        ("auditor", "Patient?_revinclude=Observation:subject", 403, None),
    ],
)
def test_include_and_revinclude(app, population, kind, query, matches, included):
    path, _, params = query.partition("?")
    resp = as_token(app, kind).get(f"/fhir/R4/{path}?{params}&_total=accurate")
    if matches == 403:
        assert_forbidden(resp)
        return
    assert ids(resp, "match") == matches
    assert ids(resp, "include") == included
    assert resp.get_json()["total"] == len(matches)  # included resources are never counted


def test_include_iterate_stays_within_reach(app, population):
    http = as_token(app, "patient")
    resp = http.get(
        "/fhir/R4/Observation?_include=Observation:encounter&_include:iterate=Encounter:participant"
        "&_include:iterate=Encounter:subject&_revinclude:iterate=Claim:patient"
    )
    assert ids(resp, "match") == {"Observation/obs-a-lab", "Observation/obs-a-vital"}
    assert ids(resp, "include") == {"Encounter/enc-a", "Patient/A", "Claim/claim-a"}  # never Practitioner/P
    insurer = as_token(app, "insurer")
    resp = insurer.get("/fhir/R4/Claim?_include=Claim:patient&_revinclude:iterate=Coverage:beneficiary")
    assert ids(resp, "match") == {"Claim/claim-a"}
    assert ids(resp, "include") == {"Patient/A", "Coverage/cov-a"}  # never cov-a-other


@pytest.mark.parametrize(
    ("kind", "query", "expected"),
    [
        ("patient", f"Patient?_has:Observation:subject:code={GLUCOSE}", {"Patient/A"}),
        ("patient", "Patient?_has:Observation:subject:category=laboratory", {"Patient/A"}),
        ("patient", "Patient?_has:Claim:patient:_id=claim-b", set()),
        ("patient", "Patient?_has:Coverage:beneficiary:payor=Organization/OTHER", {"Patient/A"}),
        ("patient", "Encounter?_has:Observation:encounter:code=8867-4", {"Encounter/enc-a"}),
        ("insurer", "Patient?_has:Claim:patient:_id=claim-a", {"Patient/A"}),
        ("insurer", "Patient?_has:Claim:patient:_id=claim-b", set()),
        ("insurer", "Patient?_has:Coverage:beneficiary:payor=Organization/INS", {"Patient/A"}),
        ("lab", f"Patient?_has:Observation:subject:code={GLUCOSE}", 403),
        ("auditor", f"Patient?_has:Observation:subject:code={GLUCOSE}", 403),
    ],
)
def test_has(app, population, kind, query, expected):
    path, _, params = query.partition("?")
    resp = as_token(app, kind).get(f"/fhir/R4/{path}?{params}&_total=accurate")
    if expected == 403:
        assert_forbidden(resp)
    else:
        assert ids(resp) == expected
        assert resp.get_json()["total"] == len(expected)


def test_has_on_an_unreadable_type_is_no_oracle_for_the_insurer(app, population):
    http = as_token(app, "insurer")
    assert http.get("/fhir/R4/Observation").status_code == 403
    real = http.get(f"/fhir/R4/Patient?_has:Observation:subject:code={GLUCOSE}")
    bogus = http.get("/fhir/R4/Patient?_has:Observation:subject:code=0000-0")
    assert (real.status_code, ids(real) if real.status_code == 200 else None) == (
        bogus.status_code,
        ids(bogus) if bogus.status_code == 200 else None,
    )


def test_has_on_hidden_instances_is_no_oracle_for_the_insurer(app, population):
    http = as_token(app, "insurer")
    assert_not_found(http.get("/fhir/R4/Coverage/cov-a-other"))
    real = http.get("/fhir/R4/Patient?_has:Coverage:beneficiary:payor=Organization/OTHER")
    bogus = http.get("/fhir/R4/Patient?_has:Coverage:beneficiary:payor=Organization/NOBODY")
    assert ids(real) == ids(bogus) == set()


# -- writes --------------------------------------------------------------------------------------------------
def _new_observation(pid: str) -> dict[str, Any]:
    body = _observation("ignored", pid, "laboratory", GLUCOSE, 1.0)
    body.pop("id")
    return body


WRITES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, str]]] = [
    # (what, method, path, body, headers)
    ("create", "POST", "/fhir/R4/{t}", None, {}),
    ("conditional create", "POST", "/fhir/R4/{t}", None, {"If-None-Exist": "_id=nothing-matches"}),
    ("update", "PUT", "/fhir/R4/{t}/{own}", None, {}),
    ("update-as-create", "PUT", "/fhir/R4/{t}/brand-new", None, {}),
    ("conditional update", "PUT", "/fhir/R4/{t}?_id={own}", None, {}),
    ("patch", "PATCH", "/fhir/R4/{t}/{own}", {"language": "en"}, {}),
    ("delete", "DELETE", "/fhir/R4/{t}/{own}", None, {}),
    ("delete hidden", "DELETE", "/fhir/R4/{t}/{hidden}", None, {}),
    ("conditional delete", "DELETE", "/fhir/R4/{t}?_id={own}", None, {}),
    ("conditional delete hidden", "DELETE", "/fhir/R4/{t}?_id={hidden}", None, {}),
]
# for each read-only token: a type it can see, one of its own instances, and one it cannot see
READ_ONLY_TARGETS = {
    "patient": [
        ("Observation", "obs-a-lab", "obs-b-lab"),
        ("Patient", "A", "B"),
        ("Coverage", "cov-a", "cov-b"),
    ],
    "insurer": [("Coverage", "cov-a", "cov-b"), ("Claim", "claim-a", "claim-b"), ("Patient", "A", "B")],
    "auditor": [("AuditEvent", "none", "none"), ("Observation", "obs-a-lab", "obs-b-lab")],
    "lab": [("Observation", "obs-a-lab", "obs-a-vital"), ("Patient", "A", "B")],
}


def _body_for(res_type: str, res_id: str | None) -> dict[str, Any]:
    source = {f"{r['resourceType']}/{r['id']}": r for r in RESOURCES}.get(f"{res_type}/{res_id}")
    if source is None:
        source = {"resourceType": res_type}
    body = dict(source)
    if res_id and res_id != "none":
        body["id"] = res_id
    else:
        body.pop("id", None)
    return body


@pytest.mark.parametrize("kind", list(TOKENS))
def test_read_only_tokens_cannot_write(app, client, population, kind):
    """patient and insurer (rs ceilings), auditor and the lab token (rs scopes): every write path is 403
    (405 on AuditEvent, which no API path may change)."""
    http = as_token(app, kind)
    for res_type, own, hidden in READ_ONLY_TARGETS[kind]:
        for what, method, template, patch_body, headers in WRITES:
            path = template.format(t=res_type, own=own, hidden=hidden)
            if method == "PATCH":
                resp = http.patch(
                    path, json=patch_body, headers={"Content-Type": "application/merge-patch+json"}
                )
            elif method in ("POST", "PUT"):
                res_id = path.rsplit("/", 1)[1] if method == "PUT" and "?" not in path else None
                body = _body_for(res_type, res_id if res_id != res_type else None)
                resp = http.open(path, method=method, json=body, headers={"Content-Type": FHIR, **headers})
            else:
                resp = http.open(path, method=method, headers=headers)
            expected = 405 if res_type == "AuditEvent" else 403  # the audit log refuses every writer
            assert resp.status_code == expected, (kind, what, path, resp.get_data(as_text=True))
    assert_untouched(client)


def test_clinician_patient_scope_cannot_read_other_patients(app, population):
    http = authorized_client(app, role="clinician", scope="patient/Observation.rs", patient="A")
    assert http.get("/fhir/R4/Observation/obs-a-lab").status_code == 200
    assert_not_found(http.get("/fhir/R4/Observation/obs-b-lab"))
    assert_not_found(http.get("/fhir/R4/Observation/obs-b-vital/_history/1"))
    assert ids(http.get("/fhir/R4/Observation")) == {"Observation/obs-a-lab", "Observation/obs-a-vital"}
    assert ids(http.get("/fhir/R4/Patient/B/Observation")) == set()
    assert_forbidden(http.get("/fhir/R4/Patient/A"))  # only Observation is in scope
    assert_forbidden(http.get("/fhir/R4/Patient"))
    resp = http.get("/fhir/R4/Observation?_include=Observation:subject")
    assert ids(resp, "match") == {"Observation/obs-a-lab", "Observation/obs-a-vital"}
    assert ids(resp, "include") == set()


def test_clinician_patient_scope_without_patient_context_sees_nothing(app, population):
    """Fail closed: patient scopes with no patient in context grant nothing at all (403 everywhere)."""
    http = authorized_client(app, role="clinician", scope="patient/Observation.rs")
    assert_forbidden(http.get("/fhir/R4/Observation"))
    assert_forbidden(http.get("/fhir/R4/Observation/obs-a-lab"))
    assert_forbidden(http.get("/fhir/R4/Patient/B/Observation"))


def test_patient_scopes_stay_in_the_compartment_next_to_user_scopes(app, population):
    http = authorized_client(
        app, role="clinician", scope="patient/Observation.rs user/Encounter.rs", patient="A"
    )
    assert ids(http.get("/fhir/R4/Encounter")) == {
        "Encounter/enc-a",
        "Encounter/enc-b",
    }  # user/ is not confined
    assert ids(http.get("/fhir/R4/Observation")) == {"Observation/obs-a-lab", "Observation/obs-a-vital"}
    assert_not_found(http.get("/fhir/R4/Observation/obs-b-lab"))


@pytest.mark.parametrize(
    ("token", "method", "path", "status"),
    [
        # the role's ceiling applies at the resource server too, whatever a token's scope claim says
        (
            {"role": "patient", "scope": "patient/*.cruds", "patient": "A"},
            "POST",
            "/fhir/R4/Observation",
            403,
        ),
        (
            {"role": "patient", "scope": "patient/*.cruds", "patient": "A"},
            "DELETE",
            "/fhir/R4/Observation/obs-a-lab",
            403,
        ),
        ({"role": "patient", "scope": "system/*.*", "patient": "A"}, "GET", "/fhir/R4/Observation", 403),
        (
            {"role": "patient", "scope": "patient/*.rs"},
            "GET",
            "/fhir/R4/Observation",
            403,
        ),  # no patient context
        (
            {"role": "insurer", "scope": "system/*.*", "organization": "INS"},
            "GET",
            "/fhir/R4/Observation",
            403,
        ),
        ({"role": "insurer", "scope": "system/*.*", "organization": "INS"}, "POST", "/fhir/R4/Coverage", 403),
        ({"role": "insurer", "scope": "system/*.rs"}, "GET", "/fhir/R4/Coverage", 403),  # no organization
        ({"role": "auditor", "scope": "system/*.*"}, "GET", "/fhir/R4/Patient", 403),
        ({"role": "admin", "scope": "system/*.*"}, "GET", "/fhir/R4/Patient", 403),
        ({"role": "no-such-role", "scope": "system/*.*"}, "GET", "/fhir/R4/Patient", 403),
        (
            {"role": "clinical-system", "scope": "patient/*.rs", "patient": "A"},
            "GET",
            "/fhir/R4/Patient",
            403,
        ),
    ],
)
def test_role_ceilings_hold_whatever_the_token_claims(app, client, population, token, method, path, status):
    resp = authorized_client(app, **token).open(path, method=method, json={} if method == "POST" else None)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert_untouched(client)


def test_unusable_scope_constraint_does_not_widen_access(app, population):
    http = authorized_client(app, scope="system/Observation.rs?categroy=laboratory")
    resp = http.get("/fhir/R4/Observation")
    assert resp.status_code != 200 or ids(resp) <= VISIBLE["lab"], ids(resp)
    assert http.get("/fhir/R4/Observation/obs-b-vital").status_code in (400, 403, 404)


@pytest.fixture
def clinician(app):
    return authorized_client(app, role="clinician", scope="patient/*.cruds", patient="A")


def _observations_of(client, pid: str) -> set[str]:
    return ids(
        client.get("/fhir/R4/Observation", query_string={"subject": f"Patient/{pid}", "_count": "100"})
    )


def test_clinician_writes_only_within_the_patient(app, client, population, clinician):
    resp = clinician.post("/fhir/R4/Observation", json=_new_observation("A"), headers={"Content-Type": FHIR})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    new_id = resp.get_json()["id"]
    assert f"Observation/{new_id}" in _observations_of(client, "A")

    before_b = _observations_of(client, "B")
    total_before = client.get("/fhir/R4/Observation", query_string={"_total": "accurate"}).get_json()["total"]
    resp = clinician.post("/fhir/R4/Observation", json=_new_observation("B"), headers={"Content-Type": FHIR})
    assert_forbidden(resp)
    assert "Location" not in resp.headers
    assert _observations_of(client, "B") == before_b == {"Observation/obs-b-lab", "Observation/obs-b-vital"}
    total_after = client.get("/fhir/R4/Observation", query_string={"_total": "accurate"}).get_json()["total"]
    assert total_after == total_before
    # not even a trace in the history (the refused version was rolled back)
    history = ids(client.get("/fhir/R4/Observation/_history", query_string={"_count": "100"}))
    assert history == {n for n in EVERYTHING if n.startswith("Observation/")} | {f"Observation/{new_id}"}


@pytest.mark.parametrize(
    ("what", "method", "path", "body", "headers", "status"),
    [
        ("create without subject", "POST", "/fhir/R4/Observation", "no-subject", {}, 403),
        (
            "conditional create for B",
            "POST",
            "/fhir/R4/Observation",
            "B",
            {"If-None-Exist": "subject=Patient/B"},
            403,
        ),
        ("update-as-create for B", "PUT", "/fhir/R4/Observation/new-for-b", "B", {}, 403),
        ("move A's observation to B", "PUT", "/fhir/R4/Observation/obs-a-lab", "obs-a-lab->B", {}, 403),
        ("update B's observation", "PUT", "/fhir/R4/Observation/obs-b-lab", "obs-b-lab", {}, 404),
        ("conditional update moving to B", "PUT", f"/fhir/R4/Observation?code={GLUCOSE}", "B", {}, 403),
        ("create Patient B-2 linked nowhere", "POST", "/fhir/R4/Patient", "patient", {}, 403),
        ("update Patient B", "PUT", "/fhir/R4/Patient/B", "patient-B", {}, 404),
        ("delete B's observation", "DELETE", "/fhir/R4/Observation/obs-b-lab", None, {}, 404),
        ("conditional delete of B's", "DELETE", "/fhir/R4/Observation?subject=Patient/B", None, {}, 404),
        ("delete Practitioner", "DELETE", "/fhir/R4/Practitioner/P", None, {}, 404),
    ],
)
def test_clinician_cannot_write_outside_the_patient(
    app, client, population, clinician, what, method, path, body, headers, status
):
    if body == "B":
        payload: dict[str, Any] | None = _new_observation("B")
        if method == "PUT" and "?" not in path:
            payload["id"] = path.rsplit("/", 1)[1]
    elif body == "no-subject":
        payload = _new_observation("A")
        payload.pop("subject")
    elif body == "obs-a-lab->B":
        payload = {
            **_observation("obs-a-lab", "A", "laboratory", GLUCOSE, 5.4),
            "subject": {"reference": "Patient/B"},
        }
    elif body == "obs-b-lab":
        payload = {**_observation("obs-b-lab", "B", "laboratory", GLUCOSE, 0.1)}
    elif body == "patient":
        payload = _patient("ignored", "Bravo", "Bob")
        payload.pop("id")
    elif body == "patient-B":
        payload = _patient("B", "Changed", "Bob")
    else:
        payload = None
    kwargs: dict[str, Any] = {"headers": {**headers}}
    if payload is not None:
        kwargs["json"] = payload
        kwargs["headers"]["Content-Type"] = FHIR
    resp = clinician.open(path, method=method, **kwargs)
    assert resp.status_code == status, (what, resp.get_data(as_text=True))
    assert_untouched(client)


def test_clinician_patch_cannot_move_a_resource_to_another_patient(app, client, population, clinician):
    resp = clinician.patch(
        "/fhir/R4/Observation/obs-a-lab",
        json=[{"op": "replace", "path": "/subject/reference", "value": "Patient/B"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert_forbidden(resp)
    resp = clinician.patch(
        "/fhir/R4/Observation/obs-b-lab",
        json={"status": "amended"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert_not_found(resp)
    assert_untouched(client)


# -- versions, deletions -------------------------------------------------------------------------------------
def test_deleted_resources_stay_hidden(app, client, population):
    """Deleting does not expose anything: B's deleted Observation still reads as absent (404, never 410,
    which would confirm it existed)."""
    assert client.delete("/fhir/R4/Observation/obs-b-lab").status_code == 200
    assert client.delete("/fhir/R4/Observation/obs-a-vital").status_code == 200
    assert client.get("/fhir/R4/Observation/obs-b-lab").status_code == 410
    http = as_token(app, "patient")
    for path in (
        "/fhir/R4/Observation/obs-b-lab",
        "/fhir/R4/Observation/obs-b-lab/_history",
        "/fhir/R4/Observation/obs-b-lab/_history/1",
        "/fhir/R4/Observation/obs-b-lab/_history/2",
    ):
        assert_not_found(http.get(path))
    history = ids(http.get("/fhir/R4/Observation/_history"))
    assert "Observation/obs-b-lab" not in history
    # Surprising but safe: the patient's own deleted Observation is out of reach too (404, not 410), because
    # the compartment is decided on search-index rows, which a deleted resource no longer has.
    assert_not_found(http.get("/fhir/R4/Observation/obs-a-vital"))
    assert "Observation/obs-a-vital" not in history


def test_resource_moved_away_from_the_patient_disappears(app, client, population):
    moved = {**_observation("obs-a-vital", "B", "vital-signs", HEART_RATE, 61)}
    assert (
        client.put("/fhir/R4/Observation/obs-a-vital", json=moved, headers={"Content-Type": FHIR}).status_code
        == 200
    )
    http = as_token(app, "patient")
    assert_not_found(http.get("/fhir/R4/Observation/obs-a-vital"))
    assert_not_found(http.get("/fhir/R4/Observation/obs-a-vital/_history/1"))
    assert_not_found(http.get("/fhir/R4/Observation/obs-a-vital/_history"))
    assert "Observation/obs-a-vital" not in ids(http.get("/fhir/R4/_history", query_string={"_count": "100"}))


def test_versions_from_before_a_move_to_the_patient_stay_hidden(app, client, population):
    moved = {**_observation("obs-b-vital", "A", "vital-signs", HEART_RATE, 99)}
    assert (
        client.put("/fhir/R4/Observation/obs-b-vital", json=moved, headers={"Content-Type": FHIR}).status_code
        == 200
    )
    http = as_token(app, "patient")
    assert http.get("/fhir/R4/Observation/obs-b-vital").status_code == 200  # it is A's now
    assert_not_found(http.get("/fhir/R4/Observation/obs-b-vital/_history/1"))
    versions = http.get("/fhir/R4/Observation/obs-b-vital/_history").get_json()["entry"]
    assert [e["resource"]["subject"]["reference"] for e in versions] == ["Patient/A"]


def _put(client, body: dict[str, Any]) -> dict[str, Any]:
    """Write ``body`` with the system token; returns the stored resource."""
    resp = client.put(
        f"/fhir/R4/{body['resourceType']}/{body['id']}", json=body, headers={"Content-Type": FHIR}
    )
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    return resp.get_json()


def versions(resp) -> list[tuple[str, int]]:
    """(Type/id, version) of a history's entries, in order."""
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [
        (e["fullUrl"].removeprefix("http://localhost/fhir/R4/"), int(e["response"]["etag"][3:-1]))
        for e in resp.get_json()["entry"]
    ]


def _link(resp, relation: str) -> str | None:
    found = [link["url"] for link in resp.get_json()["link"] if link["relation"] == relation]
    return found[0].removeprefix("http://localhost") if found else None


def _pages(http, path: str, **params: str) -> list[list[tuple[str, int]]]:
    """Every page of a history, following its next links from the first."""
    resp = http.get(path, query_string=params)
    pages = [versions(resp)]
    while (following := _link(resp, "next")) is not None:
        resp = http.get(following)
        pages.append(versions(resp))
    return pages


def _vread_text(http, name: str, version: int) -> str:
    resp = http.get(f"/fhir/R4/{name}/_history/{version}")
    assert resp.status_code == 404, resp.get_data(as_text=True)
    return resp.get_data(as_text=True).replace(f"version {version}", "version N")


def test_hidden_versions_leave_no_trace_in_history_paging(app, client, population):
    """B's four versions, then two of A's: A's token pages through exactly two versions (no empty page,
    no extra next link), and each hidden version reads like one that never existed."""
    for value in (100, 101):
        _put(client, _observation("obs-b-vital", "B", "vital-signs", HEART_RATE, value))
    last_of_b = _put(client, _observation("obs-b-vital", "B", "vital-signs", HEART_RATE, 103))["meta"]
    _put(client, _observation("obs-b-vital", "A", "vital-signs", HEART_RATE, 99))
    _put(client, _observation("obs-b-vital", "A", "vital-signs", HEART_RATE, 98))
    http = as_token(app, "patient")
    name = "Observation/obs-b-vital"
    path = f"/fhir/R4/{name}/_history"

    assert _pages(http, path, _count="1") == [[(name, 6)], [(name, 5)]]
    assert _pages(http, path, _count="2") == [[(name, 6), (name, 5)]]
    first = http.get(path, query_string={"_count": "2"})
    assert first.get_json().get("total", 2) == 2
    second = http.get(_link(http.get(path, query_string={"_count": "1"}), "next"))
    assert versions(second) == [(name, 5)]
    assert _link(second, "next") is None
    assert versions(http.get(_link(second, "previous"))) == [(name, 6)]

    never = _vread_text(http, name, 99)
    for hidden in (1, 2, 3, 4):
        assert _vread_text(http, name, hidden) == never
    for seen in (5, 6):
        assert http.get(f"/fhir/R4/{name}/_history/{seen}").status_code == 200
    # at a time when it was B's, the resource has no version A may see
    assert versions(http.get(path, query_string={"_at": last_of_b["lastUpdated"]})) == []

    # system history, paged: A's seven resources at version 1 and the two versions of A's own
    mine = {(n, 1) for n in VISIBLE["patient"]} | {(name, 5), (name, 6)}
    pages = _pages(http, "/fhir/R4/_history", _count="3")
    assert [len(p) for p in pages] == [3, 3, 3]
    assert {v for p in pages for v in p} == mine


def test_type_and_system_history_leave_out_versions_from_before_a_move(app, client, population):
    _put(client, _observation("obs-b-vital", "A", "vital-signs", HEART_RATE, 99))
    http = as_token(app, "patient")
    assert set(versions(http.get("/fhir/R4/Observation/_history"))) == {
        ("Observation/obs-a-lab", 1),
        ("Observation/obs-a-vital", 1),
        ("Observation/obs-b-vital", 2),
    }
    system = set(versions(http.get("/fhir/R4/_history", query_string={"_count": "100"})))
    assert ("Observation/obs-b-vital", 2) in system
    assert ("Observation/obs-b-vital", 1) not in system
    # the same in a transaction's read entries
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/obs-b-vital/_history/{v}"}} for v in (1, 2)
        ],
    }
    resp = http.post("/fhir/R4", json=bundle, headers={"Content-Type": FHIR})
    statuses = [e["response"]["status"] for e in resp.get_json()["entry"]]
    assert [s.split()[0] for s in statuses] == ["404", "200"]


def test_a_deletion_is_seen_by_whoever_saw_what_it_deleted(app, client, population):
    assert client.delete("/fhir/R4/Observation/obs-a-lab").status_code == 200
    _put(client, _observation("obs-a-lab", "A", "laboratory", GLUCOSE, 5.5))
    assert client.delete("/fhir/R4/Observation/obs-b-lab").status_code == 200
    _put(client, _observation("obs-b-lab", "A", "laboratory", GLUCOSE, 9.8))  # restored as A's
    http = as_token(app, "patient")
    own = "Observation/obs-a-lab"
    assert versions(http.get(f"/fhir/R4/{own}/_history")) == [(own, 3), (own, 2), (own, 1)]
    assert http.get(f"/fhir/R4/{own}/_history/2").status_code == 410
    other = "Observation/obs-b-lab"
    assert versions(http.get(f"/fhir/R4/{other}/_history")) == [(other, 3)]
    assert_not_found(http.get(f"/fhir/R4/{other}/_history/2"))  # the deletion of B's result
    assert_not_found(http.get(f"/fhir/R4/{other}/_history/1"))


def test_insurer_sees_a_claim_only_from_when_it_was_a_members(app, client, population):
    """Members are the patients of INS's Coverage: a Claim moved from B (OTHER's) to member A shows
    only its version about A; a Claim moved from A to B is out of reach altogether."""
    _put(client, _claim("claim-b", "A", "OTHER", "cov-b"))
    _put(client, _claim("claim-a", "B", "INS", "cov-a"))
    http = as_token(app, "insurer")

    assert http.get("/fhir/R4/Claim/claim-b").status_code == 200
    assert_not_found(http.get("/fhir/R4/Claim/claim-b/_history/1"))
    assert http.get("/fhir/R4/Claim/claim-b/_history/2").status_code == 200
    assert versions(http.get("/fhir/R4/Claim/claim-b/_history")) == [("Claim/claim-b", 2)]

    for path in ("", "/_history", "/_history/1", "/_history/2"):
        assert_not_found(http.get(f"/fhir/R4/Claim/claim-a{path}"))

    assert versions(http.get("/fhir/R4/Claim/_history")) == [("Claim/claim-b", 2)]
    system = set(versions(http.get("/fhir/R4/_history", query_string={"_count": "100"})))
    assert system == {("Patient/A", 1), ("Coverage/cov-a", 1), ("Claim/claim-b", 2)}


def test_insurer_does_not_see_a_coverage_from_before_it_paid_it(app, client, population):
    """cov-b was OTHER's; once INS pays it, INS sees that version, never the one that was OTHER's (even
    though its beneficiary B is now INS's member)."""
    _put(client, _coverage("cov-b", "B", "INS"))
    http = as_token(app, "insurer")
    assert versions(http.get("/fhir/R4/Coverage/cov-b/_history")) == [("Coverage/cov-b", 2)]
    assert_not_found(http.get("/fhir/R4/Coverage/cov-b/_history/1"))
    assert set(versions(http.get("/fhir/R4/Coverage/_history"))) == {
        ("Coverage/cov-a", 1),
        ("Coverage/cov-b", 2),
    }
    # and when INS stops paying cov-a, its versions are gone with it
    _put(client, _coverage("cov-a", "A", "OTHER"))
    assert_not_found(http.get("/fhir/R4/Coverage/cov-a/_history"))
    assert_not_found(http.get("/fhir/R4/Coverage/cov-a/_history/1"))


def test_each_scope_judges_versions_by_its_own_rule(app, client, population):
    """patient/ confines to A's compartment, version by version; a user/ scope constrained to laboratory
    results reaches every patient's (judged, like searches, on the current version)."""
    _put(client, _observation("obs-b-vital", "A", "vital-signs", HEART_RATE, 99))
    _put(client, _observation("obs-b-lab", "A", "laboratory", GLUCOSE, 9.9))
    http = authorized_client(
        app,
        role="clinician",
        scope="patient/Observation.rs user/Observation.rs?category=laboratory",
        patient="A",
    )
    vital, lab = "Observation/obs-b-vital", "Observation/obs-b-lab"
    assert versions(http.get(f"/fhir/R4/{vital}/_history")) == [(vital, 2)]
    assert_not_found(http.get(f"/fhir/R4/{vital}/_history/1"))
    assert versions(http.get(f"/fhir/R4/{lab}/_history")) == [(lab, 2), (lab, 1)]
    assert http.get(f"/fhir/R4/{lab}/_history/1").status_code == 200
    for path in ("/fhir/R4/Observation/_history", "/fhir/R4/_history"):
        assert set(versions(http.get(path, query_string={"_count": "100"}))) == {
            ("Observation/obs-a-lab", 1),
            ("Observation/obs-a-vital", 1),
            (vital, 2),
            (lab, 2),
            (lab, 1),
        }
