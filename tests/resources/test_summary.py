"""_summary and _elements: hand-written Patient/Observation cases, then every official example stays valid."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
import simplejson
from fhir.resources.R4B import get_fhir_model_class

from fhir_api.errors import BadRequest
from resources.registry import model_class
from resources.summary import (
    SUBSETTED_SYSTEM,
    parse_elements,
    parse_summary,
    select_elements,
    summarize,
)

SUBSETTED = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}
OTHER_TAG = {"system": "http://example.org/tags", "code": "demo"}


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "2", "tag": [OTHER_TAG]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Pat</div>'},
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
        "extension": [{"url": "http://example.org/ext", "valueString": "x"}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "123"}],
        "active": True,
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [{"url": "http://example.org/time", "valueDateTime": "1974-12-25T14:35:45-05:00"}]
        },
        "deceasedBoolean": False,
        "maritalStatus": {"text": "Married"},
        "communication": [{"language": {"text": "Dutch"}}],
        "managingOrganization": {"reference": "#o1"},
    }


def _observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Weight</div>'},
        "status": "final",
        "_status": {"extension": [{"url": "http://example.org/why", "valueString": "checked"}]},
        "category": [{"text": "vital-signs"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-01",
        "valueQuantity": {"value": Decimal("72.50"), "unit": "kg"},
        "interpretation": [{"text": "normal"}],
        "note": [{"text": "after breakfast"}],
    }


def _tags(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return resource.get("meta", {}).get("tag", [])


def _valid(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# --- parse_summary / parse_elements ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "text", "data", "count", "false", " true "])
def test_parse_summary_accepts_the_five_modes(value):
    assert parse_summary(value) == value.strip()


@pytest.mark.parametrize("value", [None, "", "  "])
def test_parse_summary_absent_or_empty_is_none(value):
    assert parse_summary(value) is None


@pytest.mark.parametrize("value", ["TRUE", "yes", "summary", "true,text"])
def test_parse_summary_rejects_other_values(value):
    with pytest.raises(BadRequest) as exc:
        parse_summary(value)
    assert exc.value.status == 400
    assert exc.value.issues[0].expression == ("_summary",)


def test_parse_elements_splits_trims_and_deduplicates():
    assert parse_elements(" name,birthDate , name,,", "Patient") == ["name", "birthDate"]
    assert parse_elements(None, "Patient") is None
    assert parse_elements("", "Patient") is None


def test_parse_elements_accepts_choice_base_and_form_names():
    assert parse_elements("value,effectiveDateTime", "Observation") == ["value", "effectiveDateTime"]
    assert parse_elements("deceased", "Patient") == ["deceased"]
    assert parse_elements("class", "Encounter") == ["class"]  # the JSON name, not the model's class_fhir


@pytest.mark.parametrize(
    ("value", "resource_type"),
    [
        ("name,bogus", "Patient"),
        ("valueQuantity", "Patient"),
        ("name.family", "Patient"),
        ("Patient.name", "Patient"),
        ("_birthDate", "Patient"),
        ("resourceType", "Patient"),
        ("name.family", None),
    ],
)
def test_parse_elements_rejects_unknown_or_nested_names(value, resource_type):
    with pytest.raises(BadRequest) as exc:
        parse_elements(value, resource_type)
    assert exc.value.status == 400
    assert exc.value.issues[0].expression == ("_elements",)


def test_parse_elements_without_a_type_checks_only_the_shape():
    assert parse_elements("name,anything", None) == ["name", "anything"]


# --- summarize ------------------------------------------------------------------------------------


def test_patient_summary_true_keeps_summary_elements_and_extension_twins():
    patient = _patient()
    out = summarize(patient, "true")
    assert list(out) == [
        "resourceType",
        "id",
        "meta",
        "identifier",
        "active",
        "name",
        "gender",
        "birthDate",
        "_birthDate",
        "deceasedBoolean",
        "managingOrganization",
    ]
    assert _tags(out) == [OTHER_TAG, SUBSETTED]
    assert out["meta"]["versionId"] == "2"
    _valid(out)


def test_patient_summary_text_keeps_text_id_meta_only():
    out = summarize(_patient(), "text")
    assert set(out) == {"resourceType", "id", "meta", "text"}
    assert SUBSETTED in _tags(out)
    _valid(out)


def test_summary_data_drops_only_text():
    patient = _patient()
    out = summarize(patient, "data")
    assert set(out) == set(patient) - {"text"}
    assert SUBSETTED in _tags(out)
    _valid(out)


def test_summary_data_without_text_removes_nothing_and_adds_no_tag():
    patient = _patient()
    del patient["text"]
    out = summarize(patient, "data")
    assert out == patient
    assert out is not patient
    assert SUBSETTED not in _tags(out)


def test_summary_false_is_an_unchanged_copy():
    patient = _patient()
    out = summarize(patient, "false")
    assert out == patient
    assert out is not patient


def test_observation_summary_true_keeps_choice_value_and_status_extension():
    obs = _observation()
    out = summarize(obs, "true")
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "_status",
        "code",
        "subject",
        "effectiveDateTime",
        "valueQuantity",
    }
    # values are shared, not re-serialised: the Decimal keeps its spelling
    assert out["valueQuantity"] is obs["valueQuantity"]
    assert str(out["valueQuantity"]["value"]) == "72.50"
    _valid(out)


def test_observation_summary_text_keeps_mandatory_status_and_code():
    out = summarize(_observation(), "text")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "_status", "code"}
    _valid(out)


def test_observation_summary_data_keeps_everything_but_text():
    obs = _observation()
    out = summarize(obs, "data")
    assert set(out) == set(obs) - {"text"}
    _valid(out)


def test_summary_true_keeps_mandatory_elements_that_are_not_summary():
    """R4 marks Appointment.participant (1..*) non-summary; dropping it would make the summary invalid."""
    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "comment": "bring letter",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }
    out = summarize(appointment, "true")
    assert set(out) == {"resourceType", "id", "meta", "status", "participant"}
    _valid(out)


def test_summary_text_keeps_a_mandatory_choice_element():
    request = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "aspirin"},
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "with food"}],
    }
    out = summarize(request, "text")
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "intent",
        "medicationCodeableConcept",
        "subject",
    }
    _valid(out)


def test_summary_count_is_the_callers_job():
    with pytest.raises(ValueError):
        summarize(_patient(), "count")


def test_type_without_a_model_is_returned_whole():
    resource = {"resourceType": "MedicinalProduct", "id": "x", "text": {"status": "empty"}, "name": []}
    assert summarize(resource, "true") == resource


# --- select_elements ------------------------------------------------------------------------------


def test_elements_choice_base_name_keeps_any_form_and_its_extension():
    obs = _observation()
    del obs["valueQuantity"]
    obs["valueString"] = "heavy"
    obs["_valueString"] = {"extension": [{"url": "http://example.org/src", "valueString": "scale"}]}
    out = select_elements(obs, ["value"])
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "_status",
        "code",
        "valueString",
        "_valueString",
    }
    assert SUBSETTED in _tags(out)
    _valid(out)


def test_elements_choice_form_name_keeps_only_that_form():
    obs = _observation()
    assert "valueQuantity" in select_elements(obs, ["valueQuantity"])
    assert "valueQuantity" not in select_elements(obs, ["valueString"])


def test_patient_elements_keep_primitive_extension_twin():
    out = select_elements(_patient(), ["birthDate", "deceased"])
    assert set(out) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "deceasedBoolean"}
    _valid(out)


def test_elements_unknown_to_the_type_select_nothing():
    out = select_elements(_patient(), ["status"])
    assert set(out) == {"resourceType", "id", "meta"}


def test_elements_naming_everything_present_adds_no_tag():
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "note": []}
    out = select_elements(obs, ["note"])
    assert out == obs
    assert "meta" not in out


# --- SUBSETTED tag and immutability ---------------------------------------------------------------


def test_subsetted_tag_is_not_duplicated():
    patient = _patient()
    patient["meta"]["tag"].append(dict(SUBSETTED))
    out = summarize(patient, "true")
    assert _tags(out) == [OTHER_TAG, SUBSETTED]


def test_meta_is_created_after_id_when_absent():
    patient = _patient()
    del patient["meta"]
    out = summarize(patient, "text")
    assert list(out)[:3] == ["resourceType", "id", "meta"]
    assert out["meta"] == {"tag": [SUBSETTED]}


@pytest.mark.parametrize(
    "apply",
    [
        lambda r: summarize(r, "true"),
        lambda r: summarize(r, "text"),
        lambda r: summarize(r, "data"),
        lambda r: select_elements(r, ["name"]),
    ],
)
def test_input_is_not_mutated(apply):
    patient = _patient()
    before = copy.deepcopy(patient)
    tag_list = patient["meta"]["tag"]
    out = apply(patient)
    assert patient == before
    assert patient["meta"]["tag"] is tag_list and len(tag_list) == 1
    assert out["meta"] is not patient["meta"]


def test_returned_tag_is_not_a_shared_constant():
    first = summarize(_patient(), "text")
    first["meta"]["tag"][-1]["code"] = "CHANGED"
    assert summarize(_patient(), "text")["meta"]["tag"][-1]["code"] == "SUBSETTED"


# --- every official example -----------------------------------------------------------------------


def test_every_official_example_summary_still_validates(shared_fhir):
    """true/text/data (and _elements with no names: only mandatory elements) over each valid example.

    Examples the R4B models refuse as sent (R4 types R4B lacks, invalid examples) are skipped; they are
    the 16 that tests/resources/test_official_examples.py lists.
    """
    skipped: list[str] = []
    failures: list[str] = []
    checked = 0
    for path in sorted((shared_fhir / "hl7-r4-examples").glob("*.json")):
        resource = simplejson.loads(path.read_text(), use_decimal=True)
        model = model_class(resource["resourceType"])
        try:
            if model is None:
                raise LookupError
            model.model_validate(resource)
        except Exception:
            skipped.append(path.name)
            continue
        before = copy.deepcopy(resource)
        for label, out in (
            ("true", summarize(resource, "true")),
            ("text", summarize(resource, "text")),
            ("data", summarize(resource, "data")),
            ("_elements", select_elements(resource, [])),
        ):
            try:
                model.model_validate(out)
            except Exception as exc:
                failures.append(f"{path.name} {label}: {str(exc).splitlines()[0]}")
        assert resource == before, path.name
        checked += 1
    assert failures == []
    assert len(skipped) == 16, skipped
    assert checked == 767
