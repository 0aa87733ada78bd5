"""Resource-server mode: tokens from an external OpenID Connect provider (JWKS served by requests-mock)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_api import create_app
from fhir_api.auth import jwks_fetch
from tests.helpers import authorized_client, empty_tables, patient

ISSUER = "https://sso.example.org/realms/hospital"
JWKS_URL = "http://sso.example.org/realms/hospital/protocol/openid-connect/certs"
AUDIENCE = "fhir-api"


@pytest.fixture
def provider(requests_mock):
    key = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"})
    key.ensure_kid()
    ec = ECKey.generate_key("P-384")
    ec.ensure_kid()
    jwks_fetch.clear_cache()
    requests_mock.get(
        JWKS_URL,
        json={"keys": [key.as_dict(private=False), ec.as_dict(private=False)]},
        headers={"Cache-Control": "max-age=300"},
    )
    yield {"rsa": key, "ec": ec, "mock": requests_mock}
    jwks_fetch.clear_cache()


@pytest.fixture
def rs_app(database_url, provider):
    application = create_app(
        {
            "DATABASE_URL": database_url,
            "TESTING": True,
            "AUTH_MODE": "external",
            "AUTH_EXTERNAL_ISSUER": ISSUER,
            "AUTH_EXTERNAL_AUDIENCE": AUDIENCE,
            "AUTH_EXTERNAL_JWKS_URL": JWKS_URL,
            "AUTH_EXTERNAL_TOKEN_ENDPOINT": f"{ISSUER}/protocol/openid-connect/token",
            "AUTH_JWKS_ALLOW_PRIVATE": True,  # the mocked provider's URL is plain http
        }
    )
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


def issue(key, alg: str = "RS256", header: dict[str, Any] | None = None, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "azp": "ward-dashboard",
        "sub": "user-123",
        "exp": now + 300,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "scope": "openid system/Patient.rs",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, claims, key, algorithms=[alg])


def get(app, path: str, token: str):
    return app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def two_patients(rs_app):
    seeding = create_app({"DATABASE_URL": rs_app.config["DATABASE_URL"]})  # built-in mode, to write data
    http = authorized_client(seeding)
    for pid in ("pa", "pb"):
        assert http.put(f"/fhir/R4/Patient/{pid}", json=patient(id=pid)).status_code == 201
    seeding.extensions["fhir_db"]["engine"].dispose()


def test_provider_tokens_are_accepted_with_their_scopes(rs_app, provider, two_patients):
    resp = get(rs_app, "/fhir/R4/Patient", issue(provider["rsa"]))
    assert resp.status_code == 200
    assert {e["resource"]["id"] for e in resp.get_json()["entry"]} == {"pa", "pb"}
    ec_token = issue(provider["ec"], alg="ES384", scope="system/Patient.rs")
    assert get(rs_app, "/fhir/R4/Patient/pa", ec_token).status_code == 200
    assert get(rs_app, "/fhir/R4/Observation", issue(provider["rsa"])).status_code == 403  # not in scope


def test_patient_context_and_role_ceilings_still_apply(rs_app, provider, two_patients):
    token = issue(provider["rsa"], scope="patient/*.rs", patient="pa", fhir_role="patient")
    assert get(rs_app, "/fhir/R4/Patient/pa", token).status_code == 200
    assert get(rs_app, "/fhir/R4/Patient/pb", token).status_code == 404
    auditor = issue(provider["rsa"], scope="system/*.rs", fhir_role="auditor")
    assert (
        get(rs_app, "/fhir/R4/Patient/pa", auditor).status_code == 403
    )  # an auditor never sees clinical data
    unknown_role = issue(provider["rsa"], fhir_role="superuser")
    assert get(rs_app, "/fhir/R4/Patient/pa", unknown_role).status_code == 401


@pytest.mark.parametrize(
    "overrides, why",
    [
        ({"iss": "https://evil.example.org"}, "another identity provider"),
        ({"aud": "someone-else"}, "another audience"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not valid yet"),
        ({"scope": None}, "no scope"),
    ],
)
def test_bad_claims_are_refused(rs_app, provider, overrides, why):
    resp = get(rs_app, "/fhir/R4/Patient", issue(provider["rsa"], **overrides))
    assert resp.status_code == 401
    assert why in resp.get_json()["issue"][0]["diagnostics"]


def test_forged_tokens_are_refused(rs_app, provider):
    other = RSAKey.generate_key(2048)
    other.ensure_kid()
    assert get(rs_app, "/fhir/R4/Patient", issue(other)).status_code == 401  # unknown kid, even after refetch
    forged_kid = issue(other, header={"kid": provider["rsa"].kid})
    assert get(rs_app, "/fhir/R4/Patient", forged_kid).status_code == 401  # known kid, wrong signature

    public_pem = provider["rsa"].as_pem(private=False)  # joserfc itself refuses to make an HMAC key of it
    signing_input = f"{_b64(_json({'alg': 'HS256', 'kid': provider['rsa'].kid}))}.{_b64(_json(_claims()))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    resp = get(rs_app, "/fhir/R4/Patient", confused)  # the public key used as an HMAC secret
    assert resp.status_code == 401 and "HS256" in resp.get_json()["issue"][0]["diagnostics"]

    unsigned = (
        ".".join(
            base64.urlsafe_b64encode(part.encode()).rstrip(b"=").decode()
            for part in ('{"alg":"none"}', _json(_claims()))
        )
        + "."
    )
    assert get(rs_app, "/fhir/R4/Patient", unsigned).status_code == 401


def test_a_rotated_provider_key_is_fetched_once(rs_app, provider):
    token = issue(provider["rsa"])
    assert get(rs_app, "/fhir/R4/Patient", token).status_code == 200
    calls = provider["mock"].call_count
    assert get(rs_app, "/fhir/R4/Patient", issue(provider["rsa"])).status_code == 200
    assert provider["mock"].call_count == calls  # cached per Cache-Control
    new = RSAKey.generate_key(2048)
    new.ensure_kid()
    provider["mock"].get(JWKS_URL, json={"keys": [new.as_dict(private=False)]})
    assert get(rs_app, "/fhir/R4/Patient", issue(new)).status_code == 200  # unknown kid: one refetch
    assert provider["mock"].call_count == calls + 1


def test_builtin_endpoints_are_off_and_discovery_points_at_the_provider(rs_app):
    http = rs_app.test_client()
    token = http.post("/auth/token", data={"grant_type": "client_credentials"})
    assert token.status_code == 400 and token.get_json()["error"] == "unsupported_grant_type"
    assert ISSUER in token.get_json()["error_description"]
    authorize = http.get("/auth/authorize")
    assert authorize.status_code == 404 and authorize.get_json()["resourceType"] == "OperationOutcome"
    conf = http.get("/fhir/R4/.well-known/smart-configuration").get_json()
    assert conf["issuer"] == ISSUER and conf["jwks_uri"] == JWKS_URL
    assert conf["token_endpoint"] == f"{ISSUER}/protocol/openid-connect/token"
    security = http.get("/fhir/R4/metadata").get_json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"token": f"{ISSUER}/protocol/openid-connect/token"}


def test_misconfiguration_refuses_to_start(database_url):
    with pytest.raises(ValueError, match="FHIR_AUTH_EXTERNAL_JWKS_URL"):
        create_app(
            {
                "DATABASE_URL": database_url,
                "AUTH_MODE": "external",
                "AUTH_EXTERNAL_ISSUER": ISSUER,
                "AUTH_EXTERNAL_AUDIENCE": AUDIENCE,
            }
        )
    with pytest.raises(ValueError, match="asymmetric"):
        create_app(
            {
                "DATABASE_URL": database_url,
                "AUTH_MODE": "external",
                "AUTH_EXTERNAL_ISSUER": ISSUER,
                "AUTH_EXTERNAL_AUDIENCE": AUDIENCE,
                "AUTH_EXTERNAL_JWKS_URL": JWKS_URL,
                "AUTH_EXTERNAL_ALGORITHMS": "RS256,HS256",
            }
        )
    with pytest.raises(ValueError, match="builtin or external"):
        create_app({"DATABASE_URL": database_url, "AUTH_MODE": "keycloak"})


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "azp": "x",
        "sub": "s",
        "exp": now + 300,
        "scope": "system/Patient.rs",
    }


def _json(obj: dict[str, Any]) -> str:
    import json

    return json.dumps(obj)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
