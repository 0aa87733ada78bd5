"""FHIR search: SearchParameter definitions, index extraction, query building."""
