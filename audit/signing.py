"""The audit log's Ed25519 key: checkpoints and export manifests are signed with it as compact JWS.

Loaded from ``FHIR_AUDIT_SIGNING_KEY_FILE`` (a private OKP JWK); ``make demo`` creates one. Auditors verify
with the public key (``/audit/checkpoints`` serves it as a JWK) using any JOSE library, algorithm
``Ed25519`` (RFC 9864; the older name is ``EdDSA``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

ALG = "Ed25519"


class AuditKeyError(RuntimeError):
    """The audit signing key is missing or unusable (raised at start-up or by the CLI, never per request)."""


def generate_key_file(path: Path) -> OKPKey:
    key = OKPKey.generate_key("Ed25519", parameters={"use": "sig", "alg": ALG})
    key.ensure_kid()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(key.as_dict(private=True), f)
    return key


def load_key(path: str | os.PathLike[str] | None) -> OKPKey:
    if not path:
        raise AuditKeyError(
            "FHIR_AUDIT_SIGNING_KEY_FILE is not set: the audit log signs its checkpoints with an Ed25519 key "
            "(a private JWK). `make demo` creates one under var/keys/; in production, provision one."
        )
    try:
        key = OKPKey.import_key(json.loads(Path(path).read_text()))
    except (OSError, ValueError, JoseError) as exc:
        raise AuditKeyError(
            f"FHIR_AUDIT_SIGNING_KEY_FILE {path} is not a readable Ed25519 JWK: {exc}"
        ) from None
    if not key.is_private or key.curve_name != "Ed25519":
        raise AuditKeyError(f"FHIR_AUDIT_SIGNING_KEY_FILE {path} holds no private Ed25519 key")
    key.ensure_kid()
    return key


def public_key(data: dict[str, Any]) -> OKPKey:
    key = OKPKey.import_key(data)
    key.ensure_kid()
    return key


def app_key(app: Flask | None = None) -> OKPKey | None:
    """The configured key, or None when the app runs without one (tests that do not sign)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.setdefault("fhir_audit", {})
    if "key" not in state:
        path = app.config.get("AUDIT_SIGNING_KEY_FILE")
        state["key"] = load_key(path) if path else None
    return state["key"]


def mac_key(app: Flask | None = None) -> bytes | None:
    """A MAC key derived from the signing key: each event row carries HMAC-SHA256(key, body), so a row
    inserted by anyone without the key file (a database superuser) is told apart from the server's own."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.setdefault("fhir_audit", {})
    if "mac_key" not in state:
        key = app_key(app)
        state["mac_key"] = derive_mac_key(key) if key is not None else None
    return state["mac_key"]


def derive_mac_key(key: OKPKey, purpose: bytes = b"fhir-audit-event-mac") -> bytes:
    private = key.as_dict(private=True)["d"]
    return hashlib.sha256(purpose + b"\x00" + private.encode()).digest()


def query_key(app: Flask | None = None) -> bytes | None:
    """The key of recorded queries' blind values (kept out of the database, like the MAC key)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.setdefault("fhir_audit", {})
    if "query_key" not in state:
        key = app_key(app)
        state["query_key"] = derive_mac_key(key, b"fhir-audit-query") if key is not None else None
    return state["query_key"]


def event_mac(key: bytes, body: str) -> str:
    mac = _keyed(key).copy()
    mac.update(body.encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 set up once per key, copied for each event: setting one up looks the algorithm up in
    OpenSSL 3 each time, which in a busy worker cost twice as much CPU as the copy and the hashing of a 2 kB
    event together (bench/audit.py breakdown)."""
    return hmac.new(key, digestmod="sha256")


def sign(payload: dict[str, Any], key: OKPKey) -> str:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return jws.serialize_compact({"alg": ALG, "kid": key.kid}, body, key, algorithms=[ALG])


def verify(token: str, key: OKPKey) -> dict[str, Any]:
    """The signed payload, or ``ValueError`` when the signature does not hold."""
    try:
        obj = jws.deserialize_compact(token, key, algorithms=[ALG])
    except (JoseError, ValueError) as exc:
        raise ValueError(f"signature check failed: {exc}") from None
    return json.loads(obj.payload)
