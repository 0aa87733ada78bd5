"""SMART on FHIR authorization: clients, tokens, and who may see what."""
