"""The generator alone (no database): deterministic, valid, coherent, streamed and ready to grow."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from itertools import islice
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from resources import jsonio
from seed import population
from seed.population import Sizes, generate, patient_id
from seed.vocabulary import MRN_SYSTEM, TEST_DATA_TAG

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _by_type(resources: list[dict[str, Any]], res_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == res_type]


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return list(generate(12, seed=7))


def test_same_seed_gives_identical_output():
    assert jsonio.dumps(list(generate(5, seed=42))) == jsonio.dumps(list(generate(5, seed=42)))


def test_different_seed_gives_different_people_with_the_same_ids():
    a, b = list(generate(5, seed=1)), list(generate(5, seed=2))
    assert [r["id"] for r in _by_type(a, "Patient")] == [r["id"] for r in _by_type(b, "Patient")]
    assert [(p["name"], p["birthDate"]) for p in _by_type(a, "Patient")] != [
        (p["name"], p["birthDate"]) for p in _by_type(b, "Patient")
    ]


def test_a_larger_population_extends_a_smaller_one():
    small, large = list(generate(4, seed=3)), list(generate(9, seed=3))
    assert large[: len(small)] == small


def test_every_resource_validates_with_the_r4b_models(sample):
    for resource in sample:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_ids_are_valid_unique_and_tagged_as_test_data(sample):
    keys = [(r["resourceType"], r["id"]) for r in sample]
    assert len(keys) == len(set(keys))
    assert all(FHIR_ID.match(r["id"]) for r in sample)
    assert all(r["meta"]["tag"] == [TEST_DATA_TAG] for r in sample)


def test_every_reference_points_at_an_earlier_resource(sample):
    seen: set[str] = set()
    for resource in sample:
        for ref in _references(resource):
            assert ref in seen, f"{resource['resourceType']}/{resource['id']} refers forward to {ref}"
        seen.add(f"{resource['resourceType']}/{resource['id']}")


def test_hospital_gp_practice_and_insurer_exist(sample):
    orgs = _by_type(sample, "Organization")
    assert {o["type"][0]["text"] for o in orgs} == {"Hospital", "General practice", "Insurer"}
    assert {o["id"] for o in orgs} == {"org-hospital-1", "org-gp-1", "org-insurer-1"}
    insurer = next(o for o in orgs if o["type"][0]["text"] == "Insurer")
    assert insurer["type"][0]["coding"][0]["code"] == "ins"
    roles = _by_type(sample, "PractitionerRole")
    assert {r["organization"]["reference"] for r in roles} == {
        "Organization/org-hospital-1",
        "Organization/org-gp-1",
    }
    assert len(_by_type(sample, "Practitioner")) == len(roles)


def test_each_patient_has_one_coverage_by_the_insurer(sample):
    patients = _by_type(sample, "Patient")
    coverages = {c["beneficiary"]["reference"]: c for c in _by_type(sample, "Coverage")}
    assert len(coverages) == len(patients) == 12
    for p in patients:
        cov = coverages[f"Patient/{p['id']}"]
        assert cov["status"] == "active"
        assert cov["payor"] == [{"reference": "Organization/org-insurer-1"}]


def test_patients_carry_identifiers_names_and_contact_details(sample):
    for p in _by_type(sample, "Patient"):
        assert p["identifier"][0]["system"] == MRN_SYSTEM and p["identifier"][0]["value"]
        assert p["name"][0]["family"] and p["name"][0]["given"]
        assert p["gender"] in ("female", "male")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p["birthDate"])
        assert p["telecom"][0]["system"] == "phone"
        assert p["address"][0]["city"] and p["address"][0]["postalCode"]
    mrns = [p["identifier"][0]["value"] for p in _by_type(sample, "Patient")]
    assert len(set(mrns)) == len(mrns)


def test_claims_and_eobs_bill_the_patients_own_coverage_and_insurer(sample):
    coverage_of = {c["beneficiary"]["reference"]: c for c in _by_type(sample, "Coverage")}
    claims = {c["id"]: c for c in _by_type(sample, "Claim")}
    assert len(claims) == len(_by_type(sample, "Encounter"))
    for claim in claims.values():
        cov = coverage_of[claim["patient"]["reference"]]
        assert claim["insurance"][0]["coverage"]["reference"] == f"Coverage/{cov['id']}"
        assert [claim["insurer"]] == cov["payor"]
        assert claim["total"]["value"] == sum(i["net"]["value"] for i in claim["item"])
    for eob in _by_type(sample, "ExplanationOfBenefit"):
        claim = claims[eob["claim"]["reference"].removeprefix("Claim/")]
        assert eob["patient"] == claim["patient"] and eob["insurer"] == claim["insurer"]
        submitted, benefit = (t["amount"]["value"] for t in eob["total"])
        assert submitted == claim["total"]["value"]
        assert 0 < benefit <= submitted


def test_observations_use_loinc_and_ucum_and_keep_decimal_precision(sample):
    observations = _by_type(sample, "Observation")
    assert {o["category"][0]["coding"][0]["code"] for o in observations} == {"vital-signs", "laboratory"}
    for obs in observations:
        assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
        for q in [obs.get("valueQuantity")] + [c["valueQuantity"] for c in obs.get("component", [])]:
            if q is not None:
                assert q["system"] == "http://unitsofmeasure.org" and q["code"]
    creatinine = [
        o["valueQuantity"]["value"] for o in observations if o["code"]["coding"][0]["code"] == "38483-4"
    ]
    assert creatinine and all(isinstance(x, Decimal) and x.as_tuple().exponent == -2 for x in creatinine)
    value = creatinine[0]
    assert f'"value":{value}' in jsonio.dumps(observations)  # e.g. 1.50 is written as 1.50, not 1.5


def test_medications_treat_conditions_of_the_same_patient(sample):
    conditions = {f"Condition/{c['id']}": c for c in _by_type(sample, "Condition")}
    requests = _by_type(sample, "MedicationRequest")
    assert requests
    for req in requests:
        assert req["medicationCodeableConcept"]["coding"][0]["system"].endswith("/rxnorm")
        reason = conditions[req["reasonReference"][0]["reference"]]
        assert reason["subject"]["reference"] == req["subject"]["reference"]


def test_counts_scale_with_the_number_of_patients():
    small = Counter(r["resourceType"] for r in generate(5, seed=11))
    large = Counter(r["resourceType"] for r in generate(20, seed=11))
    assert small["Patient"] == small["Coverage"] == 5
    assert large["Patient"] == large["Coverage"] == 20
    assert large["Organization"] == small["Organization"] == 3
    for res_type in (
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "Claim",
        "ExplanationOfBenefit",
    ):
        assert large[res_type] > small[res_type] > 0
    assert large["Claim"] == large["ExplanationOfBenefit"] == large["Encounter"] >= 20


def test_organizations_grow_in_blocks_and_patients_keep_theirs():
    assert Sizes.for_patients(10) == Sizes(10, 1, 1, 1)
    assert Sizes.for_patients(100_000) == Sizes(100_000, 20, 100, 10)
    with pytest.raises(ValueError):
        Sizes.for_patients(-1)
    # a patient deep in a large population refers only to organizations and staff its directory holds
    directory = {f"{r['resourceType']}/{r['id']}" for r in population.directory(25_000, seed=5)}
    record = list(population.patient_record(23_456, seed=5))
    own = {f"{r['resourceType']}/{r['id']}" for r in record}
    for resource in record:
        for ref in _references(resource):
            assert ref in directory or ref in own
    assert record[0]["managingOrganization"] == {"reference": "Organization/org-gp-24"}
    assert record[0]["id"] == patient_id(23_456) == "pat-23456"


def test_generation_streams():
    """A million-patient population starts at once: nothing is built ahead of what is consumed."""
    started = time.perf_counter()
    first = list(islice(generate(1_000_000, seed=1), 10_000))  # its directory, then its first patients
    assert time.perf_counter() - started < 5
    assert first[-1]["id"].startswith(("enc-", "cond-", "obs-", "medreq-", "claim-", "eob-", "pat-", "cov-"))
    assert sum(r["resourceType"] == "Organization" for r in first) == 200 + 1_000 + 100
