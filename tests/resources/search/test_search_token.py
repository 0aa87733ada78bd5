"""Token search parameters, by hand (http://hl7.org/fhir/R4/search.html#token): ``code``,
``system|code``, ``|code``, ``system|``, ``:not``, ``:text``, ``:of-type``, ``:in``/``:not-in`` with
value sets stored here, booleans, identifiers and telecoms."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import (
    SNOMED,
    bad_request,
    coding,
    concept,
    found,
    patient,
    populated_client,
    protected,
    put_all,
    refused_as_protected,
)

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN = "http://hospital.example/mrn"
LOCAL = "http://local.example/codes"
CARDIAC_VS = "http://example.org/fhir/ValueSet/cardiac"
EXPANDED_VS = "http://example.org/fhir/ValueSet/expanded"

PATIENTS = [
    patient(
        "t1",
        gender="male",
        active=True,
        identifier=[
            {
                "system": MRN,
                "value": "MRN-1",
                "type": {"coding": [coding(V2_0203, "MR")], "text": "Medical record number"},
            },
            {
                "system": "http://example.org/ssn",
                "value": "123-45",
                "type": {"coding": [coding(V2_0203, "SS")]},
            },
        ],
        telecom=[
            {"system": "phone", "value": "555-0100", "use": "home"},
            {"system": "email", "value": "t1@example.org"},
        ],
    ),
    patient(
        "t2",
        gender="female",
        active=False,
        identifier=[{"value": "NOSYS-1"}],
        telecom=[{"system": "phone", "value": "555-0200"}],
    ),
    patient(
        "t3", gender="other", identifier=[{"system": MRN, "value": "MRN-3"}], deceasedDateTime="2020-02-02"
    ),
    patient(
        "t6",
        gender="unknown",
        deceasedBoolean=True,
        identifier=[
            {
                "system": MRN,
                "value": "MRN-6",
                "type": {"coding": [coding(V2_0203, "MR"), coding(LOCAL, "chart")]},
            }
        ],
    ),
    patient("t4", deceasedBoolean=False),
    patient(
        "t5",
        identifier=[
            {"system": "http://example.org/odd", "value": "a|b"},
            {"system": "http://example.org/odd", "value": "c,d"},
        ],
    ),
]


def condition(cid: str, code: dict) -> dict:
    return {"resourceType": "Condition", "id": cid, "code": code, "subject": {"reference": "Patient/t1"}}


CONDITIONS = [
    condition("c1", concept(coding(SNOMED, "22298006", "Myocardial infarction"), text="Heart attack")),
    condition("c2", concept(coding(SNOMED, "38341003", "Hypertensive disorder"))),
    condition("c3", concept(coding(LOCAL, "22298006"))),
    condition("c4", concept(coding(None, "XYZ"))),
    condition("c5", concept(text="Back pain")),
    {"resourceType": "Condition", "id": "c6", "subject": {"reference": "Patient/t2"}},  # no code at all
]
ALL_CONDITIONS = {"c1", "c2", "c3", "c4", "c5", "c6"}

VALUESETS = [
    {
        "resourceType": "ValueSet",
        "id": "cardiac",
        "url": CARDIAC_VS,
        "status": "active",
        "compose": {"include": [{"system": SNOMED, "concept": [{"code": "22298006"}]}]},
    },
    {
        "resourceType": "ValueSet",
        "id": "expanded",
        "url": EXPANDED_VS,
        "status": "active",
        "expansion": {
            "timestamp": "2024-01-01T00:00:00Z",
            "contains": [{"system": SNOMED, "code": "38341003"}, {"system": LOCAL, "code": "22298006"}],
        },
    },
]


@pytest.fixture(scope="class", params=["protected", "clear"])
def c(request, database_url):
    """Every test runs on identifiers and telecoms sealed (blind-indexed) and in clear: same answers."""
    build = lambda c: put_all(c, PATIENTS + CONDITIONS + VALUESETS)  # noqa: E731
    with populated_client(database_url, build, protected=request.param == "protected") as c:
        yield c


class TestTokenSearch:
    def test_code_alone_matches_any_system(self, c):
        assert found(c, "Patient?gender=male") == {"t1"}
        assert found(c, "Condition?code=22298006") == {"c1", "c3"}

    def test_code_is_case_sensitive(self, c):
        assert found(c, "Patient?gender=MALE") == set()

    def test_system_and_code(self, c):
        assert found(c, f"Condition?code={SNOMED}|22298006") == {"c1"}
        assert found(c, f"Condition?code={LOCAL}|22298006") == {"c3"}
        assert found(c, f"Condition?code={SNOMED}|XYZ") == set()

    def test_bar_code_means_no_system(self, c):
        assert found(c, "Condition?code=|XYZ") == {"c4"}
        assert found(c, "Condition?code=|22298006") == set()

    def test_system_bar_matches_every_code_of_the_system(self, c):
        assert found(c, f"Condition?code={SNOMED}|") == {"c1", "c2"}
        assert found(c, f"Patient?identifier={MRN}|") == {"t1", "t3", "t6"}

    def test_not_includes_resources_without_the_element(self, c):
        assert found(c, "Patient?gender:not=male") == {"t2", "t3", "t4", "t5", "t6"}
        assert found(c, f"Condition?code:not={SNOMED}|22298006") == ALL_CONDITIONS - {"c1"}
        assert found(c, "Condition?code:not=22298006") == ALL_CONDITIONS - {"c1", "c3"}

    def test_text_on_codeable_concept_text(self, c):
        assert found(c, "Condition?code:text=heart") == {"c1"}
        assert found(c, "Condition?code:text=HEART%20att") == {"c1"}
        assert found(c, "Condition?code:text=back") == {"c5"}

    def test_text_on_coding_display(self, c):
        assert found(c, "Condition?code:text=hypertens") == {"c2"}

    def test_text_on_coding_display_when_the_concept_also_has_text(self, c):
        assert found(c, "Condition?code:text=myocardial") == {"c1"}

    def test_text_on_identifier_type_text(self, c):
        if protected(c):
            refused_as_protected(c, "Patient?identifier:text=medical%20record")
            return
        assert found(c, "Patient?identifier:text=medical%20record") == {"t1"}

    def test_of_type(self, c):
        assert found(c, f"Patient?identifier:of-type={V2_0203}|MR|MRN-1") == {"t1"}
        assert found(c, f"Patient?identifier:of-type={V2_0203}|SS|123-45") == {"t1"}
        assert found(c, f"Patient?identifier:of-type={V2_0203}|SS|MRN-1") == set()
        assert found(c, f"Patient?identifier:of-type={V2_0203}|MR|MRN-3") == set()  # MRN-3 has no type
        bad_request(c, "Patient?identifier:of-type=MR|MRN-1")

    def test_of_type_matches_any_coding_of_the_type(self, c):
        assert found(c, f"Patient?identifier:of-type={V2_0203}|MR|MRN-6") == {"t6"}
        assert found(c, f"Patient?identifier:of-type={LOCAL}|chart|MRN-6") == {"t6"}

    def test_in_value_set_by_canonical_url(self, c):
        assert found(c, f"Condition?code:in={CARDIAC_VS}") == {"c1"}
        assert found(c, f"Condition?code:in={EXPANDED_VS}") == {"c2", "c3"}

    def test_in_value_set_by_local_reference(self, c):
        assert found(c, "Condition?code:in=ValueSet/cardiac") == {"c1"}
        assert found(c, "Condition?code:in=ValueSet/expanded") == {"c2", "c3"}

    def test_in_comma_is_or(self, c):
        assert found(c, f"Condition?code:in={CARDIAC_VS},ValueSet/expanded") == {"c1", "c2", "c3"}

    def test_not_in(self, c):
        assert found(c, f"Condition?code:not-in={CARDIAC_VS}") == ALL_CONDITIONS - {"c1"}

    def test_in_unknown_value_set_is_400(self, c):
        bad_request(c, "Condition?code:in=http://example.org/fhir/ValueSet/nope")
        bad_request(c, "Condition?code:in=ValueSet/nope")

    def test_boolean(self, c):
        assert found(c, "Patient?active=true") == {"t1"}
        assert found(c, "Patient?active=false") == {"t2"}
        assert found(c, "Patient?active:missing=true") == {"t3", "t4", "t5", "t6"}
        assert found(c, "Patient?active:not=true") == {"t2", "t3", "t4", "t5", "t6"}

    def test_boolean_computed_by_an_expression(self, c):
        # deceased is "Patient.deceased.exists() and Patient.deceased != false"
        assert found(c, "Patient?deceased=true") == {"t3", "t6"}
        assert found(c, "Patient?deceased=false") == {"t1", "t2", "t4", "t5"}

    def test_identifier(self, c):
        assert found(c, f"Patient?identifier={MRN}|MRN-1") == {"t1"}
        assert found(c, "Patient?identifier=MRN-3") == {"t3"}
        assert found(c, "Patient?identifier=|NOSYS-1") == {"t2"}
        assert found(c, "Patient?identifier=|MRN-1") == set()
        assert found(c, "Patient?identifier=http://other.example|MRN-1") == set()

    def test_identifier_value_with_escaped_comma(self, c):
        assert found(c, "Patient?identifier=http://example.org/odd|c%5C,d") == {"t5"}

    def test_identifier_value_with_escaped_bar(self, c):
        assert found(c, "Patient?identifier=http://example.org/odd|a%5C|b") == {"t5"}

    def test_telecom(self, c):
        assert found(c, "Patient?phone=555-0100") == {"t1"}
        assert found(c, "Patient?email=t1@example.org") == {"t1"}
        assert found(c, "Patient?phone=t1@example.org") == set()  # an email is not a phone
        assert found(c, "Patient?telecom=phone|555-0200") == {"t2"}
        assert found(c, "Patient?telecom=email|555-0200") == set()
        assert found(c, "Patient?telecom=555-0100,555-0200") == {"t1", "t2"}

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, "Patient?gender=male,female") == {"t1", "t2"}
        assert found(c, "Patient?gender=male&gender=female") == set()
        assert found(c, "Patient?identifier=MRN-1&identifier=123-45") == {"t1"}
        assert found(c, "Patient?identifier=MRN-1&identifier=MRN-3") == set()
        assert found(c, "Patient?gender=male,other&active=true") == {"t1"}

    def test_missing(self, c):
        assert found(c, "Patient?gender:missing=true") == {"t4", "t5"}
        assert found(c, "Patient?identifier:missing=true") == {"t4"}
        assert found(c, "Condition?code:missing=true") == {"c6"}
        assert found(c, "Condition?code:missing=false") == ALL_CONDITIONS - {"c6"}

    def test_unknown_modifier_is_400(self, c):
        assert "gender:exact" in bad_request(c, "Patient?gender:exact=male")["diagnostics"]
        bad_request(c, "Patient?gender:contains=mal")
