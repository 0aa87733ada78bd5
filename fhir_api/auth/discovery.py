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
                "extension": [
                    {"url": "authorize", "valueUri": _auth("authorize")},
                    {"url": "token", "valueUri": _auth("token")},
                    {"url": "introspect", "valueUri": _auth("introspect")},
                    {"url": "revoke", "valueUri": _auth("revoke")},
                ],
            }
        ],
    }
