"""FHIR REST interactions, validation, storage and (later) search: everything that builds resource queries."""

from resources import model_speedups  # noqa: F401  (before any fhir.resources model is built)
