"""index_rows skips extracting what a protected resource's index would drop, and writes exactly the same."""

from __future__ import annotations

import pytest

from resources.protection.policy import Policy
from resources.protection.service import IndexRoot
from resources.search import indexer
from resources.search.indexer import BlindContext, index_rows

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:mrn", "value": "12345"}],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"], "prefix": ["Mr"]}],
    "telecom": [{"system": "phone", "value": "(03) 5555 6473"}],
    "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "state": "Vic", "postalCode": "3999"}],
    "birthDate": "1974-12-25",
    "gender": "male",
    "generalPractitioner": [
        {"reference": "Practitioner/p1", "identifier": {"system": "urn:gp", "value": "9"}}
    ],
}
POLICY = Policy.build(["Patient.generalPractitioner"])  # a protected reference: its identifier tokens too


def _context(keyed: bool, sets: bool) -> BlindContext:
    root = IndexRoot(1, b"k" * 32) if keyed else None
    return BlindContext(POLICY.protected_params("Patient"), root, sets)


@pytest.mark.parametrize("sets", [False, True])
@pytest.mark.parametrize("keyed", [True, False])
def test_the_rows_are_those_of_extracting_every_parameter(monkeypatch, keyed, sets):
    context = _context(keyed, sets)
    skipped = indexer._unwritten("Patient", context.protected, keyed)
    fast = index_rows("Patient", "p1", PATIENT, "http://x/fhir", context)
    monkeypatch.setattr(indexer, "_unwritten", lambda *_args: frozenset())
    assert index_rows("Patient", "p1", PATIENT, "http://x/fhir", context) == fast
    if keyed:
        assert {"family", "given", "address-city", "general-practitioner:identifier"} <= skipped
        assert not skipped & {"name", "address", "birthdate", "telecom", "general-practitioner"}
    else:
        assert "name" in skipped and "birthdate" in skipped  # nothing to hash with: nothing is extracted


def test_no_clear_value_of_a_protected_parameter_reaches_the_plain_tables():
    rows = index_rows("Patient", "p1", PATIENT, None, _context(True, True))
    plain = {
        row["param"]
        for table, rs in rows.items()
        if table.__name__ not in ("BlindIndex", "BlindSet")
        for row in rs
    }
    assert "gender" in plain
    assert not plain & {"name", "family", "given", "address-city", "general-practitioner:identifier"}
