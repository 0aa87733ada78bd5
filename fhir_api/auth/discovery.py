"""SMART discovery: ``.well-known/smart-configuration`` and the CapabilityStatement's ``rest.security``."""

from __future__ import annotations

from typing import Any

from flask import current_app

from fhir_api.http import base_url

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _auth(path: str) -> str:
    return f"{base_url(root=True)}/auth/{path}"


def smart_configuration() -> dict[str, Any]:
    """SMART App Launch 2.x section 'Metadata'; ``issuer`` because the server signs OpenID id tokens."""
    if current_app.config.get("AUTH_MODE") == "external":
        return _external_configuration()
    return {
        "issuer": _auth("").rstrip("/"),
        "authorization_endpoint": _auth("authorize"),
        "token_endpoint": _auth("token"),
        "jwks_uri": _auth("jwks"),
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/*.rs",
            "user/*.rs",
            "user/*.cruds",
            "system/*.rs",
            "system/*.cruds",
            "system/*.read",
            "system/*.write",
            "system/*.*",
        ],
        "introspection_endpoint": _auth("introspect"),
        "revocation_endpoint": _auth("revoke"),
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-asymmetric",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "context-banner",
            "sso-openid-connect",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
    }


def _external_configuration() -> dict[str, Any]:
    """Resource-server mode: clients get their tokens from the hospital's identity provider."""
    cfg = current_app.config
    out = {
        "issuer": cfg["AUTH_EXTERNAL_ISSUER"],
        "jwks_uri": cfg["AUTH_EXTERNAL_JWKS_URL"],
        "token_endpoint": cfg.get("AUTH_EXTERNAL_TOKEN_ENDPOINT") or f"{cfg['AUTH_EXTERNAL_ISSUER']}/token",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["permission-v1", "permission-v2", "sso-openid-connect"],
    }
    if cfg.get("AUTH_EXTERNAL_AUTHORIZATION_ENDPOINT"):
        out["authorization_endpoint"] = cfg["AUTH_EXTERNAL_AUTHORIZATION_ENDPOINT"]
    return out


def capability_security() -> dict[str, Any]:
    """``rest.security`` as the SMART spec and the Python fhirclient read it."""
    return {
        "cors": bool(current_app.config.get("CORS_ORIGINS")),  # CORS headers for the configured origins
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": _oauth_uris(),
            }
        ],
    }


def _oauth_uris() -> list[dict[str, str]]:
    conf = smart_configuration()
    names = (
        ("authorize", "authorization_endpoint"),
        ("token", "token_endpoint"),
        ("introspect", "introspection_endpoint"),
        ("revoke", "revocation_endpoint"),
    )
    return [{"url": url, "valueUri": conf[key]} for url, key in names if conf.get(key)]
