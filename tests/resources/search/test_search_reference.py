"""Reference search parameters, by hand (http://hl7.org/fhir/R4/search.html#reference): ``Type/id``, a
bare id, an absolute URL on this server, the ``:Type`` modifier, chains of one to three levels, and
reverse chaining with ``_has`` (nested too)."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import (
    BASE,
    LOINC,
    STRICT,
    bad_request,
    coding,
    concept,
    found,
    get,
    observation,
    patient,
    populated_client,
    put,
    put_all,
)


def ref(target: str) -> dict:
    return {"reference": target}


POPULATION = [
    {"resourceType": "Organization", "id": "acme", "name": "Acme Health"},
    {"resourceType": "Organization", "id": "beta", "name": "Beta Clinic"},
    {"resourceType": "Practitioner", "id": "house", "name": [{"family": "House", "given": ["Gregory"]}]},
    {"resourceType": "Practitioner", "id": "wilson", "name": [{"family": "Wilson", "given": ["James"]}]},
    patient(
        "alice",
        name=[{"family": "Smith", "given": ["Alice"]}],
        managingOrganization=ref("Organization/acme"),
        generalPractitioner=[ref("Practitioner/house")],
    ),
    patient(
        "bob",
        name=[{"family": "Jones", "given": ["Bob"]}],
        managingOrganization=ref("Organization/beta"),
        generalPractitioner=[ref("Practitioner/wilson")],
    ),
    patient("carol", name=[{"family": "Carter", "given": ["Carol"]}]),
    {
        "resourceType": "Encounter",
        "id": "en-1",
        "status": "finished",
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
        "subject": ref("Patient/alice"),
    },
    {
        "resourceType": "Encounter",
        "id": "en-2",
        "status": "finished",
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
        "subject": ref("Patient/bob"),
    },
    observation(
        "ob-1",
        code=concept(coding(LOINC, "8480-6")),
        subject=ref("Patient/alice"),
        encounter=ref("Encounter/en-1"),
        performer=[ref("Practitioner/house")],
    ),
    # an absolute reference to this very server (the test client's base is http://localhost)
    observation("ob-2", code=concept(coding(LOINC, "8462-4")), subject=ref(f"{BASE}/Patient/bob")),
    # a version-specific reference
    observation("ob-3", code=concept(coding(LOINC, "8480-6")), subject=ref("Patient/carol/_history/1")),
    # a Group that happens to share an id with a Patient
    observation("ob-grp", code=concept(coding(LOINC, "8310-5")), subject=ref("Group/alice")),
    # a logical reference: an identifier, no literal reference
    observation(
        "ob-id",
        code=concept(coding(LOINC, "8310-5")),
        subject={"identifier": {"system": "urn:example:mrn", "value": "M-1"}},
    ),
]
ALL_OBSERVATIONS = {"ob-1", "ob-2", "ob-3", "ob-grp", "ob-id"}


@pytest.fixture(scope="class")
def c(database_url):
    with populated_client(database_url, lambda c: put_all(c, POPULATION)) as c:
        yield c


class TestReference:
    def test_type_and_id(self, c):
        assert found(c, "Observation?subject=Patient/alice") == {"ob-1"}
        assert found(c, "Observation?subject=Group/alice") == {"ob-grp"}
        assert found(c, "Observation?subject=Patient/nobody") == set()

    def test_a_stored_absolute_reference_to_this_server_is_local(self, c):
        assert found(c, "Observation?subject=Patient/bob") == {"ob-2"}

    def test_a_stored_version_specific_reference_matches_the_resource(self, c):
        assert found(c, "Observation?subject=Patient/carol") == {"ob-3"}

    def test_bare_id_matches_any_allowed_target_type(self, c):
        assert found(c, "Observation?subject=alice") == {"ob-1", "ob-grp"}
        assert found(c, "Observation?patient=alice") == {"ob-1"}  # patient only targets Patient

    def test_absolute_url_on_this_server(self, c):
        assert found(c, f"Observation?subject={BASE}/Patient/alice") == {"ob-1"}
        assert found(c, f"Observation?subject={BASE}/Patient/bob") == {"ob-2"}

    def test_type_modifier(self, c):
        assert found(c, "Observation?subject:Patient=alice") == {"ob-1"}
        assert found(c, "Observation?subject:Group=alice") == {"ob-grp"}
        assert found(c, "Observation?subject:Device=alice") == set()

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, "Observation?subject=Patient/alice,Patient/bob") == {"ob-1", "ob-2"}
        assert found(c, "Observation?subject=Patient/alice&performer=Practitioner/house") == {"ob-1"}
        assert found(c, "Observation?subject=Patient/alice&subject=Patient/bob") == set()

    def test_missing(self, c):
        assert found(c, "Patient?organization:missing=true") == {"carol"}
        assert found(c, "Observation?encounter:missing=false") == {"ob-1"}
        assert found(c, "Observation?performer:missing=true") == ALL_OBSERVATIONS - {"ob-1"}

    def test_identifier_modifier(self, c):
        assert found(c, "Observation?subject:identifier=urn:example:mrn|M-1") == {"ob-id"}

    def test_unknown_modifier_or_malformed_reference_is_400(self, c):
        bad_request(c, "Observation?subject:Foo=alice")
        bad_request(c, "Observation?subject:exact=alice")
        bad_request(c, "Observation?subject=Foo/alice")


class TestChaining:
    def test_one_level_with_type(self, c):
        assert found(c, "Observation?subject:Patient.name=alice") == {"ob-1"}
        assert found(c, "Observation?subject:Patient.name=carol") == {"ob-3"}
        assert found(c, "Observation?subject:Patient.family=jones") == {"ob-2"}

    def test_one_level_without_type(self, c):
        assert found(c, "Observation?subject.name=alice") == {"ob-1"}
        assert found(c, "Observation?patient.name=alice,bob") == {"ob-1", "ob-2"}

    def test_chained_parameter_keeps_its_own_modifiers_and_types(self, c):
        assert found(c, "Observation?subject:Patient.name:exact=Alice") == {"ob-1"}
        assert found(c, "Observation?subject:Patient.name:exact=alice") == set()
        assert found(c, "Observation?subject:Patient.organization=Organization/acme") == {"ob-1"}
        assert found(c, "Observation?subject:Patient._id=bob") == {"ob-2"}
        assert found(c, "Observation?subject:Patient.organization:missing=true") == {"ob-3"}

    def test_two_levels(self, c):
        assert found(c, "Encounter?subject:Patient.organization.name=acme") == {"en-1"}
        assert found(c, "Encounter?subject:Patient.organization.name=beta") == {"en-2"}
        assert found(c, "Encounter?subject:Patient.organization.name=gamma") == set()
        query = "Observation?subject:Patient.general-practitioner:Practitioner.name=house"
        assert found(c, query) == {"ob-1"}
        query = "Observation?subject:Patient.general-practitioner:Practitioner.family=wilson"
        assert found(c, query) == {"ob-2"}

    def test_three_levels(self, c):
        assert found(c, "Observation?encounter.subject:Patient.organization.name=acme") == {"ob-1"}
        assert found(c, "Observation?encounter.subject:Patient.organization.name=beta") == set()

    def test_chains_combine_with_other_parameters(self, c):
        assert found(c, "Observation?subject:Patient.name=alice,bob&code=8462-4") == {"ob-2"}
        query = "Observation?subject:Patient.name=alice&subject:Patient.organization.name=acme"
        assert found(c, query) == {"ob-1"}

    def test_chain_on_a_non_reference_parameter_is_400(self, c):
        bad_request(c, "Patient?gender.name=x")

    def test_chain_to_an_unknown_parameter_is_rejected_when_strict(self, c):
        issue = bad_request(c, "Observation?subject:Patient.foo=x", STRICT)
        assert "foo" in issue["diagnostics"]


class TestReverseChaining:
    def test_has(self, c):
        assert found(c, "Patient?_has:Observation:patient:code=8480-6") == {"alice", "carol"}
        assert found(c, "Patient?_has:Observation:subject:code=8462-4") == {"bob"}
        assert found(c, f"Patient?_has:Observation:patient:code={LOINC}|8462-4") == {"bob"}
        assert found(c, "Patient?_has:Observation:patient:code=0000-0") == set()

    def test_has_comma_is_or_and_repeated_is_and(self, c):
        assert found(c, "Patient?_has:Observation:patient:code=8462-4,8480-6") == {"alice", "bob", "carol"}
        query = "Patient?_has:Observation:patient:code=8480-6&_has:Encounter:subject:status=finished"
        assert found(c, query) == {"alice"}

    def test_has_combines_with_the_resource_own_parameters(self, c):
        assert found(c, "Patient?_has:Observation:patient:code=8480-6&name=carol") == {"carol"}

    def test_has_with_a_chain_inside(self, c):
        query = "Patient?_has:Observation:patient:performer:Practitioner.name=house"
        assert found(c, query) == {"alice"}

    def test_nested_has(self, c):
        query = "Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=8462-4"
        assert found(c, query) == {"wilson"}
        query = "Organization?_has:Patient:organization:_has:Observation:patient:code=8480-6"
        assert found(c, query) == {"acme"}

    def test_chain_then_has(self, c):
        # Encounters of a patient who has a systolic blood pressure observation
        query = "Encounter?subject:Patient._has:Observation:patient:code=8480-6"
        assert found(c, query) == {"en-1"}

    def test_malformed_has_is_400(self, c):
        bad_request(c, "Patient?_has:Observation:patient=8480-6")
        bad_request(c, "Patient?_has:Foo:patient:code=8480-6")
        bad_request(c, "Patient?_has:Observation:code:code=8480-6")  # code is not a reference


def test_a_reference_to_another_server_matches_its_url(client):
    put(client, observation("ob-local", subject=ref("Patient/alice")))
    put(client, observation("ob-ext", subject=ref("http://other.example.org/fhir/Patient/alice")))
    assert found(client, "Observation?subject=http://other.example.org/fhir/Patient/alice") == {"ob-ext"}


def test_a_reference_to_another_server_is_not_a_local_reference(client):
    put(client, patient("alice", name=[{"given": ["Alice"]}]))
    put(client, observation("ob-local", subject=ref("Patient/alice")))
    put(client, observation("ob-ext", subject=ref("http://other.example.org/fhir/Patient/alice")))
    assert found(client, "Observation?subject=Patient/alice") == {"ob-local"}
    assert found(client, "Observation?subject=alice") == {"ob-local"}


def test_a_reference_to_another_server_is_not_followed_by_chains(client):
    put(client, patient("alice", name=[{"given": ["Alice"]}]))
    put(client, observation("ob-ext", subject=ref("http://other.example.org/fhir/Patient/alice")))
    assert found(client, "Observation?subject:Patient.name=alice") == set()
    assert found(client, "Patient?_has:Observation:subject:status=final") == set()


def test_deleted_targets_and_sources_do_not_match(client):
    put(client, patient("alice", name=[{"given": ["Alice"]}]))
    put(client, observation("ob-1", subject=ref("Patient/alice")))
    assert found(client, "Observation?subject:Patient.name=alice") == {"ob-1"}
    assert found(client, "Patient?_has:Observation:subject:status=final") == {"alice"}
    assert client.delete("/fhir/R4/Observation/ob-1").status_code == 200
    assert found(client, "Patient?_has:Observation:subject:status=final") == set()
    put(client, observation("ob-2", subject=ref("Patient/alice")))
    assert client.delete("/fhir/R4/Patient/alice").status_code == 200
    assert found(client, "Observation?subject:Patient.name=alice") == set()
    assert get(client, "Observation?subject=Patient/alice").status_code == 200
