"""Resource-server mode: access tokens issued by the hospital's own OpenID Connect provider (Keycloak, Azure
AD, Okta...) are verified here; the built-in token and authorization endpoints are off.

A token is accepted only when it is a JWT signed by a key of the configured JWKS URL (fetched with the same
SSRF, size and cache limits as client keys; an unknown ``kid`` refetches once, for key rotation), with an
asymmetric algorithm from ``AUTH_EXTERNAL_ALGORITHMS`` (never ``none`` or HMAC, so a public key can never be
used as a shared secret), the configured issuer, the configured audience, and a current ``exp``/``nbf``.

The provider's claims map onto this server's principal: ``scope`` (or ``scp``), ``client_id`` (or ``azp``),
the role from ``AUTH_EXTERNAL_ROLE_CLAIM`` (else derived from the scopes' context: ``system/`` ->
clinical-system, ``user/`` -> clinician, ``patient/`` -> patient), and ``patient``, ``fhirUser`` and
``organization`` when present. Roles are still ceilings: a provider cannot grant an insurer more than an
insurer may see.
"""

from __future__ import annotations

import time
from typing import Any

from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_api.auth.jwks_fetch import JwksFetchError, fetch_jwks
from fhir_api.auth.scopes import ROLE_CEILINGS

CLOCK_SKEW = 30
DEFAULT_ALGORITHMS = "RS256,RS384,RS512,ES256,ES384,ES512,PS256,PS384"


def enabled() -> bool:
    return current_app.config.get("AUTH_MODE", "builtin") == "external"


def _config(name: str) -> str:
    value = current_app.config.get(name)
    if not value:
        raise ValueError(f"FHIR_{name} must be set in resource-server mode (FHIR_AUTH_MODE=external)")
    return str(value)


def check_configuration(config: dict[str, Any]) -> str | None:
    """Why the app cannot start in external mode, or None."""
    if config.get("AUTH_MODE", "builtin") not in ("builtin", "external"):
        return "FHIR_AUTH_MODE must be builtin or external"
    if config.get("AUTH_MODE") != "external":
        return None
    required = ("AUTH_EXTERNAL_ISSUER", "AUTH_EXTERNAL_AUDIENCE", "AUTH_EXTERNAL_JWKS_URL")
    missing = [n for n in required if not config.get(n)]
    if missing:
        return "resource-server mode needs " + ", ".join(f"FHIR_{n}" for n in missing)
    algorithms = str(config.get("AUTH_EXTERNAL_ALGORITHMS") or DEFAULT_ALGORITHMS).split(",")
    if any(a.strip().upper() in ("NONE", "") or a.strip().upper().startswith("HS") for a in algorithms):
        return "FHIR_AUTH_EXTERNAL_ALGORITHMS may name only asymmetric algorithms (no none, no HS*)"
    return None


def _algorithms() -> list[str]:
    raw = str(current_app.config.get("AUTH_EXTERNAL_ALGORITHMS") or DEFAULT_ALGORITHMS)
    names = [a.strip() for a in raw.split(",") if a.strip()]
    return [a for a in names if not a.upper().startswith(("HS", "NONE"))]


def _keys(kid: str | None) -> KeySet:
    url = _config("AUTH_EXTERNAL_JWKS_URL")
    keys = KeySet.import_key_set(fetch_jwks(url))  # type: ignore[arg-type]
    if kid and not any(k.kid == kid for k in keys.keys):  # the provider rotated its keys: look again, once
        keys = KeySet.import_key_set(fetch_jwks(url, refresh=True))  # type: ignore[arg-type]
    return keys


def verify(token: str) -> dict[str, Any]:
    """The verified claims of a provider-issued token, normalised: client_id, role, scope, sub, jti, exp,
    patient, fhirUser, organization. Raises ValueError with the reason."""
    from fhir_api.auth.assertions import unverified_parts

    try:
        header, _ = unverified_parts(token)
    except Exception:  # whatever is wrong with it, it is not a token
        raise ValueError("the access token is not a JWT") from None
    alg = str(header.get("alg", ""))
    if alg not in _algorithms():
        raise ValueError(f"the access token's algorithm {alg or 'none'} is not accepted")
    try:
        keys = _keys(header.get("kid"))
        decoded = jwt.decode(token, keys, algorithms=[alg])
    except JwksFetchError as exc:
        raise ValueError(f"the identity provider's keys are unavailable: {exc}") from None
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError("the access token's signature does not verify") from None
    c = decoded.claims
    now = int(time.time())
    if c.get("iss") != _config("AUTH_EXTERNAL_ISSUER"):
        raise ValueError("the access token was issued by another identity provider")
    aud = c.get("aud")
    if _config("AUTH_EXTERNAL_AUDIENCE") not in (aud if isinstance(aud, list) else [aud]):
        raise ValueError("the access token is meant for another audience")
    exp = c.get("exp")
    if not isinstance(exp, int) or exp <= now - CLOCK_SKEW:
        raise ValueError("the access token has expired")
    nbf = c.get("nbf")
    if isinstance(nbf, int) and nbf > now + CLOCK_SKEW:
        raise ValueError("the access token is not valid yet")
    scope = c.get("scope")
    if scope is None and isinstance(c.get("scp"), list):
        scope = " ".join(str(s) for s in c["scp"])
    client_id = c.get("client_id") or c.get("azp")
    if not isinstance(scope, str) or not isinstance(client_id, str):
        raise ValueError("the access token names no scope or client")
    role = _role(c, scope)
    if role not in ROLE_CEILINGS:
        raise ValueError("the access token's role is not one this server knows")
    organization = c.get("organization")
    return {
        "jti": str(c.get("jti") or f"{client_id}:{c.get('iat', '')}:{exp}"),
        "client_id": client_id,
        "role": role,
        "scope": scope,
        "exp": exp,
        "sub": str(c.get("sub") or client_id),
        "patient": c.get("patient"),
        "fhirUser": c.get("fhirUser"),
        "organization": str(organization).removeprefix("Organization/") if organization else None,
    }


def _role(claims: dict[str, Any], scope: str) -> str | None:
    name = current_app.config.get("AUTH_EXTERNAL_ROLE_CLAIM") or "fhir_role"
    value = claims.get(name)
    if isinstance(value, list):
        value = next((v for v in value if v in ROLE_CEILINGS), None)
    if isinstance(value, str):
        return value
    contexts = {s.split("/", 1)[0] for s in scope.split() if "/" in s}
    for context, role in (("system", "clinical-system"), ("user", "clinician"), ("patient", "patient")):
        if contexts == {context}:
            return role
    return None
