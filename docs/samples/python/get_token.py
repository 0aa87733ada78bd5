"""Get an access token by SMART Backend Services (client_credentials with a private_key_jwt assertion).

    FHIR_BASE=http://127.0.0.1:8000/fhir/R4 CLIENT_ID=... PRIVATE_KEY_FILE=key.jwk \
        SCOPE="system/Patient.rs" python get_token.py            # prints the access token
    ... python get_token.py --assertion                          # prints only a signed client assertion

PRIVATE_KEY_FILE: the client's private key as a JWK (JSON), a JWK Set, a PEM file, or a demo key file
(var/keys/clients/NAME.json from `make demo`, which also holds the client_id). ALG defaults from the key
(ES384 for P-384, RS384 for RSA); KEY_ID defaults to the JWK's kid, else its RFC 7638 thumbprint.
Needs: requests, joserfc.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import requests
from joserfc import jwk, jwt

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
SCOPE = os.environ.get("SCOPE", "system/*.rs")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def load_key() -> tuple[object, str]:
    """(private key, client_id) from PRIVATE_KEY_FILE and CLIENT_ID."""
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
            sys.exit("PRIVATE_KEY_FILE is a PEM file but neither an EC nor an RSA private key")
    else:
        data = json.loads(text)
        if "key" in data:  # a `make demo` key file: {"client_id": ..., "key": {...}}
            client_id = client_id or data["client_id"]
            data = data["key"]
        if "keys" in data:  # a JWK Set: its first private key
            data = next(k for k in data["keys"] if "d" in k)
        key = jwk.import_key(data)
    if not client_id:
        sys.exit("set CLIENT_ID (the client_id the server registered)")
    return key, client_id


def signed_assertion(token_url: str) -> str:
    key, client_id = load_key()
    params = key.as_dict(private=False)
    alg = os.environ.get("ALG") or params.get("alg") or CURVE_ALGS.get(params.get("crv", ""), "RS384")
    kid = os.environ.get("KEY_ID") or key.kid or key.thumbprint()
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,  # exactly the token endpoint's URL
        "exp": int(time.time()) + 240,  # at most five minutes ahead
        "jti": uuid.uuid4().hex,  # never reused: the server refuses a replay
    }
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_endpoint() -> str:
    """SMART discovery: the token URL is the assertion's audience."""
    conf = requests.get(f"{FHIR_BASE}/.well-known/smart-configuration", timeout=10)
    conf.raise_for_status()
    return conf.json()["token_endpoint"]


def main() -> None:
    token_url = token_endpoint()
    if "--assertion" in sys.argv[1:]:
        print(signed_assertion(token_url))
        return
    resp = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": SCOPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed_assertion(token_url),
        },
        timeout=10,
    )
    body = resp.json()
    if resp.status_code != 200:  # OAuth errors (RFC 6749 section 5.2), not OperationOutcome
        error, why = body.get("error"), body.get("error_description")
        sys.exit(f"token endpoint answered {resp.status_code}: {error}: {why}")
    print(f"granted scope {body['scope']!r} for {body['expires_in']} s", file=sys.stderr)
    print(body["access_token"])


if __name__ == "__main__":
    main()
