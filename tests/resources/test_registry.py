"""The R4 type list matches the official definitions."""

from __future__ import annotations

import json

from resources.registry import R4_RESOURCE_TYPES, supported_types


def test_r4_types_cover_every_searchparameter_base(shared_fhir):
    bundle = json.loads((shared_fhir / "definitions" / "search-parameters.json").read_text())
    bases = {b for e in bundle["entry"] for b in e["resource"].get("base", [])} - {
        "Resource",
        "DomainResource",
    }
    assert bases <= R4_RESOURCE_TYPES
    assert len(R4_RESOURCE_TYPES) == 146


def test_supported_types_exclude_r4_types_missing_from_r4b():
    assert "Patient" in supported_types()
    assert "MedicinalProduct" not in supported_types()
    assert "SubstanceSpecification" not in supported_types()
