"""Create a Patient (FHIR create interaction): POST [base]/Patient; the server assigns the id.

    TOKEN=$(python get_token.py) FAMILY=Chalmers python create.py

Prints the new id, from the Location header (201 Created, with ETag W/"1"). Needs: requests.
"""

from __future__ import annotations

import os
import sys

import requests

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (python get_token.py prints one)")

patient = {
    "resourceType": "Patient",
    "name": [
        {"use": "official", "family": os.environ.get("FAMILY", "Chalmers"), "given": ["Peter", "James"]}
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
}
resp = requests.post(
    f"{FHIR_BASE}/Patient",
    json=patient,
    headers={
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    },
    timeout=10,
)
if resp.status_code != 201:
    issue = resp.json()["issue"][0]
    sys.exit(f"{resp.status_code}: {issue['diagnostics']} at {issue.get('expression', ['-'])[0]}")
location = resp.headers["Location"]  # [base]/Patient/[id]/_history/1
new_id = location.split("/_history/")[0].rsplit("/", 1)[1]
print(f"created Patient/{new_id} ETag {resp.headers['ETag']}")
print(f"Location: {location}")
