"""Export the audit log as NDJSON (auditors only) and check its signed manifest.

    TOKEN=$(SCOPE=system/AuditEvent.rs CLIENT_ID=<auditor> python get_token.py) python audit_export.py

GET [server]/audit/export?format=ndjson streams every chained AuditEvent, then a Parameters resource holding
the manifest: a compact JWS (Ed25519) over the count, first and last seq, the chain head and the SHA-256 of
every line before it. This checks the signature with the key from /audit/checkpoints, the count and the
hash. Optional filters: START, END (FHIR dates), PATIENT (Patient/id), CLIENT (client id).
OUTPUT (default audit.ndjson) keeps the file for `fhir-api audit verify --export FILE`.
Needs: requests, joserfc.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import requests
from joserfc import jws
from joserfc.jwk import OKPKey

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
SERVER = FHIR_BASE.removesuffix("/fhir/R4")  # the audit endpoints live beside the FHIR base
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (an auditor's token, scope system/AuditEvent.rs)")
OUTPUT = os.environ.get("OUTPUT", "audit.ndjson")
FILTERS = {
    name.lower(): os.environ[name] for name in ("START", "END", "PATIENT", "CLIENT") if os.environ.get(name)
}

auth = {"Authorization": f"Bearer {TOKEN}"}
resp = requests.get(
    f"{SERVER}/audit/export", params={"format": "ndjson", **FILTERS}, headers=auth, stream=True, timeout=60
)
if resp.status_code != 200:
    sys.exit(f"{resp.status_code}: {resp.json()['issue'][0]['diagnostics']}")
digest, events, manifest_token = hashlib.sha256(), 0, None
with open(OUTPUT, "wb") as out:
    for line in resp.iter_lines(delimiter=b"\n"):
        if not line:
            continue
        out.write(line + b"\n")
        record = json.loads(line)
        if record["resourceType"] == "Parameters":  # the manifest comes last
            manifest_token = record["parameter"][0]["valueString"]
        else:
            digest.update(line + b"\n")
            events += 1
if manifest_token is None:
    sys.exit("the export has no manifest: it was cut short")

checkpoints = requests.get(f"{SERVER}/audit/checkpoints", params={"_count": 1}, headers=auth, timeout=10)
checkpoints.raise_for_status()
key = OKPKey.import_key(checkpoints.json()["key"])
manifest = json.loads(jws.deserialize_compact(manifest_token, key, algorithms=["Ed25519"]).payload)
print(f"exported {events} audit events to {OUTPUT} (seq {manifest['first_seq']}..{manifest['last_seq']})")
print("manifest signature: ok (Ed25519, key from /audit/checkpoints)")
print(f"manifest count: {'ok' if manifest['count'] == events else 'MISMATCH'}")
print(f"manifest sha256: {'ok' if manifest['sha256'] == digest.hexdigest() else 'MISMATCH'}")
if manifest["count"] != events or manifest["sha256"] != digest.hexdigest():
    sys.exit(1)
