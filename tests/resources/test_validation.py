"""Validation with the R4B models, and resources.model_speedups: same outcome as the library's own check."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from fhir_api.errors import InvalidResource
from resources import model_speedups
from resources.registry import check_type
from resources.validation import validate

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [{"family": "Chalmers", "given": ["Peter", None], "_given": [None, {"extension": []}]}],
    "telecom": [{"system": "phone", "value": "555"}],
    "contact": [{"name": {"family": "Chalmers"}, "telecom": [{"system": "email", "value": "a@b.c"}]}],
}


def _issues(resource: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    with pytest.raises(InvalidResource) as raised:
        validate(resource, resource["resourceType"])
    return [(i.diagnostics, i.expression) for i in raised.value.issues]


def test_the_faster_check_is_the_one_every_model_runs():
    assert model_speedups.INSTALLED
    patient = check_type("Patient")
    bound = patient.__pydantic_decorators__.model_validators["reject_null_complex_elements"].func
    assert bound.__func__ is model_speedups.reject_null_complex_elements
    assert model_speedups.install() is False  # too late once models exist: nothing is replaced twice


def test_a_resource_without_nulls_in_complex_lists_is_valid_and_primitive_list_nulls_stay_allowed():
    validate(copy.deepcopy(PATIENT), "Patient")  # given[1] is null beside its _given extension: allowed


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("name",), [("Patient.name: None is not allowed as an element of name", ("Patient.name",))]),
        (
            ("contact", 0, "telecom"),
            [
                (
                    "Patient.contact[0].telecom: None is not allowed as an element of telecom",
                    ("Patient.contact[0].telecom",),
                )
            ],
        ),
    ],
)
def test_a_null_in_a_list_of_complex_elements_is_refused_as_the_library_refuses_it(path, expected):
    resource = copy.deepcopy(PATIENT)
    target: Any = resource
    for step in path:
        target = target[step]
    target.append(None)
    assert _issues(resource) == expected


def test_two_null_lists_are_both_reported_by_the_library_check():
    resource = copy.deepcopy(PATIENT)
    resource["name"].append(None)
    resource["telecom"].insert(0, None)
    expressions = sorted(e for _, (e,) in _issues(resource))
    assert expressions == ["Patient.name", "Patient.telecom"]


def test_the_fields_checked_are_the_library_choice_per_class():
    patient = check_type("Patient")
    names = {name for name, _ in model_speedups._complex_lists(patient)}
    assert {"name", "telecom", "contact", "identifier", "address"} <= names
    assert not names & {"gender", "birthDate", "active"}  # not lists
    assert all(not n.endswith("__ext") for n in names)
    assert issubclass(patient, FHIRAbstractModel)
