"""A transaction Bundle (all entries or none): a patient and an observation that refers to it by urn:uuid.

    TOKEN=$(python get_token.py) MRN=12345 python transaction.py

The patient is created only if none has the identifier yet (ifNoneExist), so running it twice creates one
patient and two observations. Prints each entry's status and location. Needs: requests.
"""

from __future__ import annotations

import os
import sys
import uuid

import requests

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (python get_token.py prints one)")
SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
MRN = os.environ.get("MRN", "12345")

patient_ref = f"urn:uuid:{uuid.uuid4()}"
bundle = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": patient_ref,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": SYSTEM, "value": MRN}],
                "name": [{"family": "Chalmers", "given": ["Peter"]}],
            },
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{MRN}"},
        },
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
                },
                "subject": {"reference": patient_ref},  # rewritten to Patient/[id] by the server
                "effectiveDateTime": "2024-05-01T09:30:00Z",
                "valueQuantity": {
                    "value": 72,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    ],
}
resp = requests.post(
    FHIR_BASE,
    json=bundle,
    headers={
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    },
    timeout=30,
)
if resp.status_code != 200:
    # One failing entry rolls back the whole transaction; the diagnostics name the entry.
    sys.exit(f"{resp.status_code}: {resp.json()['issue'][0]['diagnostics']}")
result = resp.json()
print(f"{result['type']}: {len(result['entry'])} entries")
for entry in result["entry"]:
    print(f"{entry['response']['status']} {entry['response'].get('location', '')}".rstrip())
