"""Compiled search-parameter accessors: each construct by hand, then the official examples and Synthea
resources against fhirpathpy evaluating the same expressions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from resources.search.definitions import all_params, params_for
from resources.search.paths import _fallback, compile_expression, is_compiled, reference_type, split_union


def nodes(expression: str, node: dict[str, Any], resource: dict[str, Any] | None = None) -> list[Any]:
    return compile_expression(expression)(node, resource)


# -- dotted paths ------------------------------------------------------------------------------------------
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-01-02T03:04:05Z", "tag": [{"code": "a"}, {"code": "b"}]},
    "name": [{"family": "Zola", "given": ["Émile", None, "Édouard"]}, {"family": "Roe", "given": ["Ann"]}],
    "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b.c"}],
    "birthDate": "1840-04-02",
    "deceasedDateTime": "1902-09-29",
}


def test_dotted_path_flattens_arrays_in_document_order_and_skips_json_nulls() -> None:
    assert nodes("Patient.name.given", PATIENT) == ["Émile", "Édouard", "Ann"]
    assert nodes("Patient.name.family", PATIENT) == ["Zola", "Roe"]
    assert nodes("Patient.meta.tag", PATIENT) == [{"code": "a"}, {"code": "b"}]
    assert nodes("Patient.birthDate", PATIENT) == ["1840-04-02"]


def test_complex_nodes_are_the_input_objects_themselves() -> None:
    assert nodes("Patient.name", PATIENT)[1] is PATIENT["name"][1]


def test_leading_type_must_match_the_resource() -> None:
    assert nodes("Observation.status", PATIENT) == []
    assert nodes("Patient.missing.path", PATIENT) == []


def test_resource_and_domain_resource_roots_accept_any_resource() -> None:
    assert nodes("Resource.id", PATIENT) == ["p1"]
    assert nodes("Resource.meta.lastUpdated", PATIENT) == ["2024-01-02T03:04:05Z"]
    assert nodes("DomainResource.id", {"resourceType": "Observation", "id": "o"}) == ["o"]


def test_decimals_come_back_as_parsed() -> None:
    obs = json.loads('{"resourceType":"Observation","valueQuantity":{"value":1.50}}', parse_float=Decimal)
    (value,) = nodes("Observation.value.value", obs)
    assert value == Decimal("1.50") and str(value) == "1.50"


# -- unions ------------------------------------------------------------------------------------------------
def test_union_concatenates_in_member_order_and_drops_repeats() -> None:
    assert nodes("Patient.name.family | Patient.name.given", PATIENT) == [
        "Zola",
        "Roe",
        "Émile",
        "Édouard",
        "Ann",
    ]
    assert nodes("Patient.name.family | Patient.name.family", PATIENT) == ["Zola", "Roe"]
    assert nodes("Patient.meta.tag | Patient.meta.tag", PATIENT) == [{"code": "a"}, {"code": "b"}]


def test_union_members_for_other_types_select_nothing() -> None:
    expression = (
        "AllergyIntolerance.code | Condition.code | (MedicationRequest.medication as CodeableConcept)"
    )
    condition = {"resourceType": "Condition", "code": {"text": "flu"}}
    request = {"resourceType": "MedicationRequest", "medicationCodeableConcept": {"text": "aspirin"}}
    assert nodes(expression, condition) == [{"text": "flu"}]
    assert nodes(expression, request) == [{"text": "aspirin"}]


def test_split_union_keeps_parentheses_and_strings_whole() -> None:
    expression = "(A.b as X) | A.c.where(d='x|y') | A.e[0]"
    assert split_union(expression) == ["(A.b as X)", "A.c.where(d='x|y')", "A.e[0]"]


# -- choice types ------------------------------------------------------------------------------------------
OBSERVATION = {
    "resourceType": "Observation",
    "valueQuantity": {"value": 7, "unit": "mg"},
    "effectiveDateTime": "2020-01-02",
    "component": [
        {"code": {"text": "a"}, "valueString": "text"},
        {"code": {"text": "b"}, "valueQuantity": {"value": 3}},
        {"code": {"text": "c"}, "valueCodeableConcept": {"text": "coded"}},
    ],
}


@pytest.mark.parametrize(
    "expression",
    [
        "Observation.value as Quantity",
        "(Observation.value as Quantity)",
        "Observation.value.as(Quantity)",
        "Observation.value.ofType(Quantity)",
        "Observation.value",
    ],
)
def test_choice_type_forms(expression: str) -> None:
    assert nodes(expression, OBSERVATION) == [{"value": 7, "unit": "mg"}]


def test_choice_type_names_are_capitalised_into_the_json_key() -> None:
    assert nodes("(Observation.effective as dateTime)", OBSERVATION) == ["2020-01-02"]
    assert nodes("Observation.component.value as string", OBSERVATION) == ["text"]
    assert nodes("Observation.value as CodeableConcept", OBSERVATION) == []


def test_as_applies_to_every_item_of_a_collection() -> None:
    # FHIRPath's `as` wants a singleton; search parameters mean "those of this type" (ofType)
    assert nodes("(Observation.component.value as Quantity)", OBSERVATION) == [{"value": 3}]


def test_path_continues_after_a_parenthesised_as() -> None:
    expression = "(Observation.value as string) | (Observation.component.value as CodeableConcept).text"
    assert nodes(expression, OBSERVATION) == ["coded"]


def test_bare_choice_element_reads_only_typed_keys() -> None:
    odd = {"resourceType": "Observation", "valueSet": "http://example.org/vs", "valueString": "s"}
    assert nodes("Observation.value", odd) == ["s"]
    assert nodes("Observation.component.value", OBSERVATION) == ["text", {"value": 3}, {"text": "coded"}]


def test_relative_choice_without_type_context() -> None:
    assert nodes("value", {"valueSet": "x", "valueBoolean": False}) == [False]
    assert nodes("value.as(Quantity) | value.as(Range)", {"valueRange": {"low": {"value": 1}}}) == [
        {"low": {"value": 1}}
    ]


def test_as_includes_derived_types() -> None:
    condition = {"resourceType": "Condition", "onsetAge": {"value": 40, "unit": "a"}}
    assert nodes("Condition.onset.as(Age)", condition) == [{"value": 40, "unit": "a"}]
    # Age is a Quantity
    assert nodes("Condition.onset.as(Quantity)", condition) == [{"value": 40, "unit": "a"}]
    assert nodes("Condition.onset.as(Range)", condition) == []
    # canonical is a uri in FHIR's type tree, so ConceptMap's source-uri parameter also sees sourceCanonical
    concept_map = {"resourceType": "ConceptMap", "sourceCanonical": "http://example.org/vs"}
    assert nodes("(ConceptMap.source as uri)", concept_map) == ["http://example.org/vs"]
    assert nodes("(ConceptMap.source as canonical)", concept_map) == ["http://example.org/vs"]
    assert fhirpathpy.evaluate(concept_map, "ConceptMap.source as uri", model=R4) == ["http://example.org/vs"]


def test_as_on_an_element_that_is_not_a_choice() -> None:
    obs = {"resourceType": "Observation", "subject": {"reference": "Patient/1"}}
    assert nodes("Observation.subject as Reference", obs) == [{"reference": "Patient/1"}]
    assert nodes("Observation.subject as Quantity", obs) == []


# -- where -------------------------------------------------------------------------------------------------
def resolves(
    type_name: str, *references: dict[str, Any], resource: dict[str, Any] | None = None
) -> list[Any]:
    obs = {"resourceType": "Observation", "performer": list(references), **(resource or {})}
    return nodes(f"Observation.performer.where(resolve() is {type_name})", obs)


@pytest.mark.parametrize(
    "reference",
    [
        {"reference": "Patient/123"},
        {"reference": "https://example.org/fhir/Patient/123"},
        {"reference": "Patient/123/_history/4"},
        {"type": "Patient", "identifier": {"value": "x"}},
        {"type": "http://hl7.org/fhir/StructureDefinition/Patient", "display": "x"},
    ],
)
def test_where_resolve_is_keeps_references_to_that_type(reference: dict[str, Any]) -> None:
    assert resolves("Patient", reference) == [reference]
    assert resolves("Practitioner", reference) == []


def test_where_resolve_is_uses_contained_resources() -> None:
    contained = {"contained": [{"resourceType": "Patient", "id": "p"}]}
    assert resolves("Patient", {"reference": "#p"}, resource=contained) == [{"reference": "#p"}]
    assert resolves("Patient", {"reference": "#other"}, resource=contained) == []


def test_where_resolve_is_cannot_type_a_urn_uuid() -> None:
    assert resolves("Patient", {"reference": "urn:uuid:0c7764a9-ede1-44de-9c32-8d41151a713e"}) == []
    assert reference_type({"reference": "urn:uuid:x", "type": "Patient"}) == "Patient"


def test_where_field_equals_literal() -> None:
    assert nodes("Patient.telecom.where(system='phone')", PATIENT) == [{"system": "phone", "value": "555"}]
    assert nodes("Patient.telecom.where(system='fax')", PATIENT) == []
    library = {
        "resourceType": "Library",
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://example.org/Library/a"},
            {"type": "composed-of", "resource": "http://example.org/Library/b"},
        ],
    }
    expression = "Library.relatedArtifact.where(type='composed-of').resource"
    assert nodes(expression, library) == ["http://example.org/Library/b"]
    assert is_compiled(expression)


# -- indexing and first() ----------------------------------------------------------------------------------
def test_index_and_first_apply_to_the_whole_collection() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Composition"}}, {"resource": {}}],
    }
    assert nodes("Bundle.entry[0].resource", bundle) == [{"resourceType": "Composition"}]
    assert nodes("Bundle.entry[5].resource", bundle) == []
    assert nodes("Patient.name.given.first()", PATIENT) == ["Émile"]
    assert nodes("Patient.name.first().given", PATIENT) == ["Émile", "Édouard"]
    assert nodes("Patient.name.given[2]", PATIENT) == ["Ann"]


# -- the fhirpathpy fallback -------------------------------------------------------------------------------
def test_other_expressions_fall_back_to_fhirpathpy() -> None:
    expression = "Patient.name.given.count() > 2"
    assert not is_compiled(expression)
    assert nodes(expression, PATIENT) == [True]
    assert nodes(expression, {"resourceType": "Patient"}) == [False]


@pytest.mark.parametrize(
    "patient",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Patient", "deceasedBoolean": False},
        {"resourceType": "Patient", "deceasedBoolean": True},
        {"resourceType": "Patient", "deceasedDateTime": "2020-03-01"},
    ],
)
def test_present_and_not_false_idiom_is_compiled_and_agrees_with_fhirpathpy(patient) -> None:
    expression = "Patient.deceased.exists() and Patient.deceased != false"
    assert is_compiled(expression)
    assert nodes(expression, patient) == _fallback(expression)(patient)


def test_fallback_sees_the_enclosing_resource() -> None:
    sequence = {
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"text": "2"}},
        "variant": [{}],
    }
    assert nodes("%resource.referenceSeq.chromosome", sequence["variant"][0], sequence) == [{"text": "2"}]


def test_fallback_failure_yields_no_values(caplog: pytest.LogCaptureFixture) -> None:
    assert nodes("Patient.name.given is string", PATIENT) == []  # `is` on three items is an error
    assert nodes("Patient.name.given.single()", PATIENT) == []  # so is single()
    assert caplog.text.count("FHIRPath evaluation failed") == 2


def test_empty_expression_is_refused() -> None:
    with pytest.raises(ValueError):
        compile_expression(" ")


# -- coverage of the official expressions ------------------------------------------------------------------
# The only official expressions outside the compiled subset, and why.
FALLBACK: dict[str, str] = {}  # Patient.deceased's `X.exists() and X != false` is compiled as an idiom
FALLBACK_COMPONENTS = {
    "%resource.referenceSeq.chromosome": "reads the enclosing resource (%resource)",
    "%resource.referenceSeq.referenceSeqId": "reads the enclosing resource (%resource)",
}


def test_official_expressions_compile_directly_but_the_listed_few() -> None:
    expressions = {p.expression for p in all_params() if p.expression}
    components = {expression for p in all_params() for _, expression in p.components}
    assert {e for e in expressions if not is_compiled(e)} == set(FALLBACK)
    assert {e for e in components if not is_compiled(e)} == set(FALLBACK_COMPONENTS)


# -- the corpus: compiled accessors against fhirpathpy -----------------------------------------------------
R4 = models["r4"]
SYNTHEA_PER_TYPE = 40
_AS_OPERATOR = re.compile(r"\s+as\s+([A-Za-z]+)")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")
_current: dict[str, Any] = {}  # the resource under test, for the reference resolve() below

# Expressions on which fhirpathpy and the compiled accessor legitimately disagree, with the reason. The corpus
# test fails if one of these starts agreeing on every resource, or if anything else disagrees.
KNOWN_DIFFERENCES = {
    "value.as(DateTime) | value.as(Period)": (
        "Observation code-value-date component: DateTime is the System type, so fhirpathpy's strict typing "
        "matches no FHIR dateTime; the parameter clearly means valueDateTime, which the accessor returns"
    ),
}
# FHIRPath's `x as T` is an error when x has several items; search applies it to each item (what .ofType(T)
# does), so where fhirpathpy raises that error the reference is the same expression with .ofType(T). These
# are the expressions of the corpus that need it (a resource with several components, useContexts...).
AS_ON_SEVERAL_ITEMS = {
    "(ActivityDefinition.useContext.value as CodeableConcept)",
    "(ActivityDefinition.useContext.value as Quantity) | (ActivityDefinition.useContext.value as Range)",
    "(Composition.relatesTo.target as Identifier)",
    "(Composition.relatesTo.target as Reference)",
    "(Group.characteristic.value as CodeableConcept) | (Group.characteristic.value as boolean)",
    "(Library.useContext.value as CodeableConcept)",
    "(Library.useContext.value as Quantity) | (Library.useContext.value as Range)",
    "(Measure.useContext.value as CodeableConcept)",
    "(Measure.useContext.value as Quantity) | (Measure.useContext.value as Range)",
    "(Medication.ingredient.item as CodeableConcept)",
    "(Medication.ingredient.item as Reference)",
    "(Observation.component.value as CodeableConcept)",
    "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
    "(Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)",
    "(Observation.value as Quantity) | (Observation.value as SampledData) | "
    "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
    "(PlanDefinition.useContext.value as CodeableConcept)",
    "(PlanDefinition.useContext.value as Quantity) | (PlanDefinition.useContext.value as Range)",
    "(Substance.ingredient.substance as Reference)",
    "Substance.code | (Substance.ingredient.substance as CodeableConcept)",
}


def _reference_resolve(references: list[Any]) -> list[Any]:
    """resolve() for fhirpathpy, independent of the code under test: a stub of the referenced type."""
    out = []
    for ref in references:
        literal = ref.get("reference", "") if isinstance(ref, dict) else ""
        found = _REFERENCE.search(literal)
        type_name = found.group(1) if found else None
        if literal.startswith("#"):
            contained = [c for c in _current.get("contained", []) if c.get("id") == literal[1:]]
            type_name = contained[0]["resourceType"] if contained else None
        elif not found and isinstance(ref, dict) and isinstance(ref.get("type"), str):
            type_name = ref["type"].rsplit("/", 1)[-1]
        if type_name:
            out.append(ResourceNode.create_node({"resourceType": type_name}))
    return out


OPTIONS = {
    "returnRawData": True,
    "userInvocationTable": {"resolve": {"fn": _reference_resolve, "arity": {0: []}}},
}


@cache
def _fhirpath(expression: str):
    return fhirpathpy.compile(expression, model=R4, options=OPTIONS)


def _evaluate(expression: str, node: Any, resource: dict[str, Any]) -> tuple[list[Any], bool]:
    """fhirpathpy's raw nodes; True when the per-item reading of `as` was needed."""
    try:
        return _fhirpath(expression)(node, {"resource": resource}), False
    except ValueError as error:
        if "singleton on left side of 'as'" not in str(error):
            raise
    return _fhirpath(_AS_OPERATOR.sub(r".ofType(\1)", expression))(node, {"resource": resource}), True


def _data(node: Any) -> Any:
    return node.data if isinstance(node, ResourceNode) else node


def _comparable(values: list[Any], expression: str) -> list[str]:
    """Canonical JSON, extension-only and null nodes dropped; unions compared as sets (both engines drop
    repeats, but fhirpathpy keeps equal dicts reached by different paths)."""
    kept = [_data(v) for v in values]
    kept = [v for v in kept if v is not None and not (isinstance(v, dict) and list(v) == ["extension"])]
    items = [json.dumps(v, sort_keys=True, default=str) for v in kept]
    return sorted(set(items)) if len(split_union(expression)) > 1 else items


def _official_examples(root: Path) -> Iterator[dict[str, Any]]:
    for path in sorted((root / "hl7-r4-examples").glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        yield resource
        if resource.get("resourceType") == "Bundle":
            yield from (
                e["resource"] for e in resource.get("entry", []) if isinstance(e.get("resource"), dict)
            )


def _rewrite_urns(node: Any, urls: dict[str, str]) -> Any:
    """What a transaction does before indexing: urn:uuid references become Type/id."""
    if isinstance(node, dict):
        return {k: urls.get(v, v) if k == "reference" else _rewrite_urns(v, urls) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_urns(v, urls) for v in node]
    return node


def _synthea_sample(root: Path) -> Iterator[dict[str, Any]]:
    """The first SYNTHEA_PER_TYPE resources of each type, bundles in name order: deterministic."""
    taken: dict[str, int] = {}
    for path in sorted((root / "synthea-r4").glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        urls = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
        }
        for entry in bundle["entry"]:
            res_type = entry["resource"]["resourceType"]
            if taken.get(res_type, 0) < SYNTHEA_PER_TYPE:
                taken[res_type] = taken.get(res_type, 0) + 1
                yield _rewrite_urns(entry["resource"], urls)


def _compare(resource: dict[str, Any], report: dict[str, Any]) -> None:
    _current.clear()
    _current.update(resource)
    for param in params_for(resource.get("resourceType", "")).values():
        if not param.expression:
            continue
        mine = compile_expression(param.expression)(resource)
        theirs, per_item = _evaluate(param.expression, resource, resource)
        report["checked"] += 1
        report["per_item_as"] |= {param.expression} if per_item else set()
        if _comparable(mine, param.expression) != _comparable(theirs, param.expression):
            report["differ"].setdefault(param.expression, f"{resource['resourceType']}/{resource.get('id')}")
        if param.components:
            _compare_components(param.expression, param.components, resource, report)


def _compare_components(
    expression: str, components: tuple[tuple[str, str], ...], resource: dict[str, Any], report: dict[str, Any]
) -> None:
    """Component expressions on each node the composite selects (member by member: fhirpathpy's union
    forgets the element paths it needs to find choice types)."""
    for member in split_union(expression):
        for node in _evaluate(member, resource, resource)[0]:
            for code, component in components:
                mine = compile_expression(component)(_data(node), resource)
                found, _ = _evaluate(component, node, resource)
                report["checked"] += 1
                if _comparable(mine, component) != _comparable(found, component):
                    report["differ"].setdefault(component, f"{resource['resourceType']}/{code}")


@pytest.fixture(scope="module")
def corpus_report(shared_fhir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"checked": 0, "differ": {}, "per_item_as": set()}
    for resource in _official_examples(shared_fhir):
        _compare(resource, report)
    for resource in _synthea_sample(shared_fhir):
        _compare(resource, report)
    return report


def test_corpus_accessors_agree_with_fhirpathpy(corpus_report: dict[str, Any]) -> None:
    assert corpus_report["checked"] > 10_000
    unexpected = {e: where for e, where in corpus_report["differ"].items() if e not in KNOWN_DIFFERENCES}
    assert unexpected == {}


def test_corpus_known_differences_still_differ(corpus_report: dict[str, Any]) -> None:
    assert set(corpus_report["differ"]) >= set(KNOWN_DIFFERENCES)


def test_corpus_as_on_several_items_is_the_listed_set(corpus_report: dict[str, Any]) -> None:
    assert corpus_report["per_item_as"] == AS_ON_SEVERAL_ITEMS


def test_fhirpathpy_does_not_match_resource_roots_to_concrete_types() -> None:
    """Why definitions rewrite ``Resource.id`` to ``Patient.id``: fhirpathpy selects nothing from it."""
    assert fhirpathpy.evaluate(PATIENT, "Resource.id", model=R4) == []
    assert nodes("Resource.id", PATIENT) == fhirpathpy.evaluate(PATIENT, "Patient.id", model=R4) == ["p1"]
