"""The R4 type list matches the official definitions."""

from __future__ import annotations

import json

from resources.registry import R4_RESOURCE_TYPES, model_class, supported_types


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


def test_supported_types_are_the_types_whose_models_validate():
    """supported_types finds the models by file, without importing them: the same list as importing each."""
    assert supported_types() == tuple(sorted(t for t in R4_RESOURCE_TYPES if model_class(t) is not None))


def test_creating_the_app_imports_no_resource_model_it_does_not_use():
    """Every worker would otherwise hold all 128 models' pydantic schemas (~60 MB) from its start."""
    import subprocess
    import sys

    code = (
        "import sys; from fhir_api import create_app; create_app({'DATABASE_URL': 'sqlite://'}); "
        "print(sum(m.startswith('fhir.resources.R4B.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) < 10, out.stdout
