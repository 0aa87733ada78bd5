"""The fhirpy library: create, read, update and search with a bearer token.

    TOKEN=$(python get_token.py) FAMILY=Chalmers python fhirpy_crud.py

Needs: fhirpy.
"""

from __future__ import annotations

import os
import sys

from fhirpy import SyncFHIRClient

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (python get_token.py prints one)")
FAMILY = os.environ.get("FAMILY", "Chalmers")

api = SyncFHIRClient(FHIR_BASE, authorization=f"Bearer {TOKEN}")

patient = api.resource("Patient", name=[{"family": FAMILY, "given": ["Ann"]}], gender="female")
patient.save()  # POST [base]/Patient
print(f"created Patient/{patient.id} version {patient['meta']['versionId']}")

patient["birthDate"] = "1980-02-29"
patient.save()  # PUT [base]/Patient/[id]
print(f"updated Patient/{patient.id} version {patient['meta']['versionId']}")

again = api.reference("Patient", patient.id).to_resource()  # GET [base]/Patient/[id]
print(f"read Patient/{again.id}: {again['name'][0]['family']} born {again['birthDate']}")

matches = api.resources("Patient").search(family=FAMILY).sort("-_lastUpdated").limit(50).fetch()
print(f"search family={FAMILY}: {len(matches)} patients")
for found in matches:
    print(f"  Patient/{found.id}")
