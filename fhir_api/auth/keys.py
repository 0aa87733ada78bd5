"""The server's token-signing key: loaded from ``FHIR_AUTH_SIGNING_KEY_FILE``, never invented at runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from joserfc.jwk import RSAKey

SIGNING_ALG = "RS256"  # fast to verify (tens of microseconds), and every SMART client library accepts it


class AuthConfigurationError(RuntimeError):
    """The server cannot issue or check tokens as configured; raised at start-up, never per request."""


def generate_signing_key_file(path: Path) -> RSAKey:
    """A new private JWK written with owner-only permissions (``make demo`` and tests only)."""
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": SIGNING_ALG})
    key.ensure_kid()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(key.as_dict(private=True), f)
    return key


def _load(path: str | None) -> RSAKey:
    if not path:
        raise AuthConfigurationError(
            "FHIR_AUTH_SIGNING_KEY_FILE is not set: the server needs a private RSA key (JWK) to sign access "
            "tokens. `make demo` creates one under var/keys/; in production, provision one per deployment."
        )
    try:
        data = json.loads(Path(path).read_text())
        key = RSAKey.import_key(data)
    except (OSError, ValueError) as exc:
        raise AuthConfigurationError(
            f"FHIR_AUTH_SIGNING_KEY_FILE {path} is not a readable JWK: {exc}"
        ) from None
    if not key.is_private:
        raise AuthConfigurationError(f"FHIR_AUTH_SIGNING_KEY_FILE {path} holds no private key")
    key.ensure_kid()
    return key


def init_app(app: Flask) -> None:
    app.extensions.setdefault("fhir_auth", {})


def signing_key(app: Flask | None = None) -> RSAKey:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.setdefault("fhir_auth", {})
    if "key" not in state:
        state["key"] = _load(app.config.get("AUTH_SIGNING_KEY_FILE"))
    return state["key"]


def public_jwks() -> dict[str, Any]:
    return {"keys": [signing_key().as_dict(private=False)]}
