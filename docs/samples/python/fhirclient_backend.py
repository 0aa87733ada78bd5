"""The Python fhirclient library (SMART on FHIR's client) doing SMART Backend Services, then a read and a
search with its model classes.

    FHIR_BASE=http://127.0.0.1:8000/fhir/R4 CLIENT_ID=... PRIVATE_KEY_FILE=key.jwk \
        SCOPE="system/Patient.rs" PATIENT_ID=pat-0001 FAMILY=Chalmers python fhirclient_backend.py

fhirclient finds the token endpoint in the CapabilityStatement and posts the client assertion given as
``jwt_token``; it does not sign one itself, so this signs it with joserfc (as get_token.py does).
Needs: fhirclient, requests, joserfc.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import requests
from fhirclient import client
from fhirclient.models.patient import Patient
from joserfc import jwk, jwt

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
SCOPE = os.environ.get("SCOPE", "system/Patient.rs")
PATIENT_ID = os.environ.get("PATIENT_ID", "pat-0001")
FAMILY = os.environ.get("FAMILY", "Chalmers")
CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def client_assertion(token_url: str) -> tuple[str, str]:
    """(client_id, assertion) signed with PRIVATE_KEY_FILE: a JWK, a PEM (EC or RSA) or a demo key file."""
    text = Path(os.environ["PRIVATE_KEY_FILE"]).read_text()
    client_id = os.environ.get("CLIENT_ID", "")
    if "-----BEGIN" in text:
        key = None
        for kty in ("EC", "RSA"):
            try:
                key = jwk.import_key(text, kty)
                break
            except Exception:  # not this key type: try the next one
                continue
        if key is None:
            raise SystemExit("PRIVATE_KEY_FILE is a PEM file but neither an EC nor an RSA private key")
    else:
        data = json.loads(text)
        if "key" in data:  # a `make demo` key file
            client_id, data = client_id or data["client_id"], data["key"]
        key = jwk.import_key(data)
    params = key.as_dict(private=False)
    alg = params.get("alg") or CURVE_ALGS.get(params.get("crv", ""), "RS384")
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "jti": uuid.uuid4().hex}
    header = {"alg": alg, "kid": key.kid or key.thumbprint(), "typ": "JWT"}
    return client_id, jwt.encode(header, claims, key, algorithms=[alg])


token_url = requests.get(f"{FHIR_BASE}/.well-known/smart-configuration", timeout=10).json()["token_endpoint"]
client_id, assertion = client_assertion(token_url)
smart = client.FHIRClient(
    settings={"app_id": client_id, "api_base": f"{FHIR_BASE}/", "scope": SCOPE, "jwt_token": assertion}
)
smart.prepare()  # reads the CapabilityStatement: FHIR version and the OAuth endpoints
print(f"server: FHIR {smart.server.capabilityStatement.fhirVersion}")
smart.authorize()  # client_credentials with the signed assertion
print(f"authorized: {smart.ready}")

patient = Patient.read(PATIENT_ID, smart.server)
name = patient.name[0] if patient.name else None
print(
    f"read Patient/{patient.id}: {' '.join(name.given or []) if name else ''} {name.family if name else ''}"
)

found = Patient.where(struct={"family": FAMILY, "_count": "10"}).perform_resources_iter(smart.server)
ids = [p.id for p in found]  # perform_resources_iter follows the next links
print(f"search family={FAMILY}: {len(ids)} patients")
for pid in ids:
    print(f"  Patient/{pid}")
