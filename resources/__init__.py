"""FHIR REST interactions, validation, storage and (later) search: everything that builds resource queries."""
