"""Demo clients for `make demo`: one per role, each with its own key pair kept under ``var/keys/clients``.

Only the demo uses this: it writes private keys to disk so that `fhir-api token NAME` can sign client
assertions on the user's behalf. Real clients keep their private keys themselves.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy.orm import Session

from fhir_api.auth.clients import Registration, add_client, list_clients

DEMO_CLIENTS: dict[str, dict[str, Any]] = {
    "demo-hospital": {"role": "clinical-system", "scope": "system/*.cruds"},
    "demo-gp": {"role": "clinical-system", "scope": "system/*.rs system/Observation.cruds"},
    "demo-insurer": {
        "role": "insurer",
        "scope": "system/*.rs system/Subscription.cruds",
        "organization": "Organization/org-insurer-1",
    },
    "demo-auditor": {"role": "auditor", "scope": "system/AuditEvent.rs"},
    "demo-admin": {"role": "admin", "scope": "admin"},
}


def ensure_demo_clients(session: Session, key_dir: Path) -> list[tuple[str, str, str]]:
    """Register the demo clients that are missing; (name, role, client_id) for all of them."""
    existing = {c.name: c for c in list_clients(session)}
    out = []
    for name, spec in DEMO_CLIENTS.items():
        path = key_dir / f"{name}.json"
        client = existing.get(name)
        if client is None or not path.exists():
            key = ECKey.generate_key("P-384")
            key.ensure_kid()
            jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
            client = add_client(session, Registration(name=name, jwks=jwks, **spec))
            key_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"client_id": client.client_id, "key": key.as_dict(private=True)}, f)
        out.append((name, client.role, client.client_id))
    return out


def signed_assertion(key_file: Path, token_url: str) -> tuple[str, str]:
    """(client_id, client assertion) signed with a demo client's private key."""
    data = json.loads(key_file.read_text())
    key = ECKey.import_key(data["key"])
    now = int(time.time())
    claims = {
        "iss": data["client_id"],
        "sub": data["client_id"],
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "ES384", "kid": key.kid, "typ": "JWT"}
    return data["client_id"], jwt.encode(header, claims, key, algorithms=["ES384"])


# App Launch: two public apps (PKCE) and a user for each, so the login, consent and picker pages can be tried.
DEMO_REDIRECT = "http://localhost:9000/callback"
DEMO_APPS: dict[str, dict[str, Any]] = {
    "demo-clinician-app": {
        "role": "clinician",
        "scope": "openid fhirUser launch launch/patient offline_access online_access "
        "user/*.cruds patient/*.rs",
    },
    "demo-patient-app": {
        "role": "patient",
        "scope": "openid fhirUser launch/patient offline_access online_access patient/*.rs",
    },
}
DEMO_USERS: dict[str, dict[str, str]] = {
    "dr-hart": {"role": "clinician", "fhir_user": "Practitioner/prac-hospital-1-1", "name": "Dr Hart"},
    "pat-0001": {"role": "patient", "fhir_user": "Patient/pat-0001", "name": "Patient 0001"},
}


def ensure_demo_apps(session: Session) -> list[tuple[str, str, str]]:
    existing = {c.name: c for c in list_clients(session)}
    out = []
    for name, spec in DEMO_APPS.items():
        client = existing.get(name) or add_client(
            session, Registration(name=name, public=True, redirect_uris=(DEMO_REDIRECT,), **spec)
        )
        out.append((name, client.role, client.client_id))
    return out


def ensure_demo_users(session: Session, path: Path) -> dict[str, str]:
    """Demo users with random passwords, kept (owner-only) in ``path`` so `make demo` can print them."""
    import secrets

    from fhir_api.auth.users import add_user, get_user

    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for username, spec in DEMO_USERS.items():
        if get_user(session, username) is not None and username in known:
            continue
        password = secrets.token_urlsafe(12)
        if get_user(session, username) is None:
            add_user(session, username, password, spec["role"], spec["fhir_user"], spec["name"])
            known[username] = password
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(known, f)
    return known
