"""Read one Patient (FHIR read interaction): GET [base]/Patient/[id].

    TOKEN=$(python get_token.py) PATIENT_ID=pat-0001 python read.py

Prints the patient's id, version (from the ETag) and name. Needs: requests.
"""

from __future__ import annotations

import os
import sys

import requests

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (python get_token.py prints one)")
PATIENT_ID = os.environ.get("PATIENT_ID", "pat-0001")

resp = requests.get(
    f"{FHIR_BASE}/Patient/{PATIENT_ID}",
    headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"},
    timeout=10,
)
if resp.status_code != 200:
    # Every error is an OperationOutcome; its details link to the server's error catalogue (/docs/errors).
    issue = resp.json()["issue"][0]
    sys.exit(f"{resp.status_code}: {issue['diagnostics']} ({issue.get('details', {}).get('text', '')})")
patient = resp.json()
name = (patient.get("name") or [{}])[0]
print(f"Patient/{patient['id']} ETag {resp.headers['ETag']}")
print(f"name: {' '.join(name.get('given', []))} {name.get('family', '')}".rstrip())
print(f"birthDate: {patient.get('birthDate', '-')}")
