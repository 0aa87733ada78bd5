"""The packaged search-parameter definitions: one SearchParam per base, expressions split per base."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from resources.registry import R4_RESOURCE_TYPES
from resources.search import build_definitions
from resources.search.definitions import (
    SearchParam,
    _raw,
    all_params,
    expression_for,
    params_for,
    retarget,
)
from resources.search.paths import split_union


def test_one_param_per_declared_base() -> None:
    raw = _raw()["parameters"]
    assert len(raw) == 1375
    assert len(all_params()) == sum(len(p["base"]) for p in raw)
    assert Counter(p.type for p in all_params()).keys() <= {
        "string", "token", "date", "reference", "quantity", "number", "uri", "composite", "special",
    }  # fmt: skip


def test_params_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        params_for("Patient")["birthdate"].code = "x"  # type: ignore[misc]


def test_single_base_param() -> None:
    birthdate = params_for("Patient")["birthdate"]
    assert birthdate == SearchParam(
        code="birthdate",
        type="date",
        base="Patient",
        expression="Patient.birthDate",
        url="http://hl7.org/fhir/SearchParameter/individual-birthdate",
    )


def test_multi_base_expression_keeps_only_the_base_members() -> None:
    assert params_for("Condition")["code"].expression == "Condition.code"
    assert params_for("AllergyIntolerance")["code"].expression == (
        "AllergyIntolerance.code | AllergyIntolerance.reaction.substance"
    )
    assert (
        params_for("MedicationRequest")["code"].expression
        == "(MedicationRequest.medication as CodeableConcept)"
    )
    assert (
        params_for("Observation")["patient"].expression == "Observation.subject.where(resolve() is Patient)"
    )
    assert params_for("Person")["email"].expression == "Person.telecom.where(system='email')"


def test_base_prefixes_do_not_match_longer_type_names() -> None:
    expression = "Medication.code | MedicationRequest.code"
    assert expression_for(expression, "Medication", ["Medication", "MedicationRequest"]) == "Medication.code"


def test_every_member_of_every_multi_base_expression_goes_to_exactly_one_base() -> None:
    for raw in _raw()["parameters"]:
        if len(raw["base"]) < 2 or "expression" not in raw:
            continue
        split = [
            m
            for base in raw["base"]
            for m in split_union(expression_for(raw["expression"], base, raw["base"]))
        ]
        assert sorted(split) == sorted(split_union(raw["expression"])), raw["id"]
        assert all(expression_for(raw["expression"], b, raw["base"]) for b in raw["base"]), raw["id"]


def test_common_params_apply_to_every_type_with_the_type_in_the_expression() -> None:
    patient = params_for("Patient")
    assert patient["_id"].expression == "Patient.id"
    assert patient["_lastUpdated"].expression == "Patient.meta.lastUpdated"
    assert patient["_tag"].base == "Patient"
    assert {"_id", "_lastUpdated", "_profile", "_security", "_source", "_tag", "_text"} <= patient.keys()
    assert all("_id" in params_for(t) for t in R4_RESOURCE_TYPES)


def test_text_is_for_domain_resources_only() -> None:
    assert "_text" in params_for("Observation")
    assert "_text" not in params_for("Bundle") and "_id" in params_for("Bundle")


def test_params_without_expression_are_kept_with_an_empty_one() -> None:
    assert params_for("Patient")["_text"].expression == ""
    assert params_for("Patient")["_content"].expression == ""


def test_all_params_keep_common_bases() -> None:
    ids = [p for p in all_params() if p.code == "_id"]
    assert [(p.base, p.expression) for p in ids] == [("Resource", "Resource.id")]


def test_retarget_only_rewrites_leading_type() -> None:
    assert retarget("Resource.meta.tag", "Resource", "Patient") == "Patient.meta.tag"
    assert retarget("(Resource.x as Y) | Resource.z", "Resource", "Patient") == "(Patient.x as Y) | Patient.z"


def test_components_resolve_to_codes() -> None:
    param = params_for("Observation")["code-value-quantity"]
    assert param.type == "composite" and not param.multiple_or
    assert param.expression == "Observation"
    assert param.components == (("code", "code"), ("value-quantity", "value.as(Quantity)"))
    all_codes = {p.code for p in all_params()}
    assert all(code in all_codes for p in all_params() for code, _ in p.components)


def test_targets() -> None:
    assert params_for("Observation")["subject"].targets == ("Group", "Device", "Patient", "Location")
    anything = params_for("Task")["subject"].targets
    assert len(anything) == 145 and "Patient" in anything and "Parameters" not in anything


def test_unknown_type_has_no_params() -> None:
    assert params_for("NoSuchType") == {}


def test_package_file_is_what_the_script_writes(shared_fhir: Path) -> None:
    source = shared_fhir / "definitions" / "search-parameters.json"
    params = build_definitions.search_parameters(json.loads(source.read_text(encoding="utf-8")))
    assert build_definitions.render(params) == build_definitions.OUTPUT.read_text(encoding="utf-8")
    assert "CC0-1.0" in _raw()["note"] and "4.0.1" in _raw()["note"]
