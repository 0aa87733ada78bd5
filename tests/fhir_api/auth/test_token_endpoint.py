"""The token endpoint and bearer checks as the ONC Inferno SMART Backend Services kit tests them, plus the
attacks Inferno does not try (alg confusion, jku injection, replay, SSRF through JWKS URLs, revocation)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import requests_mock
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from fhir_api import outbound
from fhir_api.auth import jwks_fetch
from fhir_api.auth.keys import signing_key
from tests.helpers import client_assertion, mint_token, new_client_key, register_client

TOKEN_URL = "http://localhost/auth/token"
FHIR_BASE = "http://localhost/fhir/R4"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWKS_URL = "https://keys.example.org/jwks.json"
PUBLIC_ADDRESS = "93.184.216.34"


# -- helpers -------------------------------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unverified_payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def unverified_header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def assertion_claims(client_id: str, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


def token_form(
    assertion: str | None, scope: str | None = "system/Patient.rs", **extra: Any
) -> dict[str, str]:
    form: dict[str, Any] = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def assert_oauth_error(resp, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 section 5.2: a JSON object with ``error``, never cached, never an OperationOutcome."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["error"] == error, body
    assert "resourceType" not in body
    assert "no-store" in resp.headers.get("Cache-Control", "")
    assert resp.headers.get("Pragma") == "no-cache"
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Backend:
    """A registered backend-services client and the private key it signs assertions with."""

    client_id: str
    key: Any
    jwks: dict[str, Any]
    alg: str

    def assertion(self, **overrides: Any) -> str:
        return client_assertion(self.key, self.client_id, TOKEN_URL, alg=self.alg, **overrides)


def make_backend(app, alg: str = "ES384", scope: str = "system/Patient.rs system/Observation.rs", **fields):
    key, jwks = new_client_key(alg)
    client_id = register_client(
        app, role=fields.pop("role", "clinical-system"), scope=scope, jwks=jwks, **fields
    )
    return Backend(client_id, key, jwks, alg)


@pytest.fixture
def backend(app) -> Backend:
    return make_backend(app)


@pytest.fixture(autouse=True)
def _fresh_jwks_cache() -> Iterator[None]:
    jwks_fetch.clear_cache()
    yield
    jwks_fetch.clear_cache()


# -- discovery -----------------------------------------------------------------------------------------------
def test_smart_configuration_is_public_and_complete(anonymous):
    resp = anonymous.get("/fhir/R4/.well-known/smart-configuration", headers={"Accept": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc = json.loads(resp.get_data(as_text=True))
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["jwks_uri"] == "http://localhost/auth/jwks"
    assert "client_credentials" in doc["grant_types_supported"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert "none" not in [a.lower() for a in doc["token_endpoint_auth_signing_alg_values_supported"]]
    assert not any(a.startswith("HS") for a in doc["token_endpoint_auth_signing_alg_values_supported"])
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "plain" not in doc["code_challenge_methods_supported"]
    assert "client-confidential-asymmetric" in doc["capabilities"]
    assert isinstance(doc["capabilities"], list)
    assert {"system/*.read", "system/*.rs"} & set(doc["scopes_supported"])
    assert doc["issuer"] == "http://localhost/auth"  # with sso-openid-connect: the id tokens' iss
    assert "sso-openid-connect" in doc["capabilities"]
    assert doc["introspection_endpoint"] == "http://localhost/auth/introspect"
    assert doc["revocation_endpoint"] == "http://localhost/auth/revoke"


def test_smart_configuration_ignores_a_bad_token(anonymous):
    """Discovery must work before a client has any token, even if it sends a stale one."""
    resp = anonymous.get("/fhir/R4/.well-known/smart-configuration", headers=bearer("garbage"))
    assert resp.status_code == 200


@pytest.mark.parametrize("accept", ["application/fhir+xml", "application/xml", "text/plain"])
def test_smart_configuration_is_json_whatever_the_accept_header(anonymous, accept):
    resp = anonymous.get("/fhir/R4/.well-known/smart-configuration", headers={"Accept": accept})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert json.loads(resp.get_data(as_text=True))["token_endpoint"] == TOKEN_URL


def test_capability_statement_announces_smart(anonymous):
    resp = anonymous.get("/fhir/R4/metadata")
    assert resp.status_code == 200
    security = resp.get_json()["rest"][0]["security"]
    codings = [c for s in security["service"] for c in s["coding"]]
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "code": "SMART-on-FHIR",
    } in [{"system": c["system"], "code": c["code"]} for c in codings]
    (oauth,) = [
        e
        for e in security["extension"]
        if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    ]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris["token"] == TOKEN_URL


def test_server_jwks_publishes_only_public_keys(anonymous):
    resp = anonymous.get("/auth/jwks")
    assert resp.status_code == 200
    keys = resp.get_json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(keys[0])


# -- successful token requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_token_request_succeeds(app, anonymous, alg):
    be = make_backend(app, alg=alg)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(), scope="system/Patient.rs"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int)
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/Patient.rs"
    assert "refresh_token" not in body
    assert "no-store" in resp.headers["Cache-Control"]
    assert resp.headers["Pragma"] == "no-cache"

    token = body["access_token"]
    header = unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    # the token verifies with the published JWKS, and says who it is for
    published = KeySet.import_key_set(anonymous.get("/auth/jwks").get_json())
    claims = jwt.decode(token, published, algorithms=["RS256"]).claims
    assert claims["client_id"] == be.client_id
    assert claims["sub"] == be.client_id
    assert claims["aud"] == FHIR_BASE
    assert claims["iss"] == "http://localhost/auth"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert claims["scope"] == "system/Patient.rs"

    data = anonymous.get("/fhir/R4/Patient", headers=bearer(token))
    assert data.status_code == 200, data.get_data(as_text=True)
    assert data.get_json()["resourceType"] == "Bundle"
    # ...and only for what it was granted
    assert anonymous.get("/fhir/R4/Observation", headers=bearer(token)).status_code == 403


def test_token_request_with_matching_client_id_and_registered_jku(app, anonymous):
    """An optional client_id equal to the issuer is accepted; jku equal to the registered URL too."""
    be = make_backend(app)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(), client_id=be.client_id))
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_assertion_with_list_audience_is_accepted(app, anonymous):
    be = make_backend(app)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(aud=[TOKEN_URL, "https://other"])))
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_token_lifetime_never_exceeds_five_minutes(app, anonymous):
    app.config["AUTH_TOKEN_LIFETIME"] = 3600
    be = make_backend(app)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion()))
    assert resp.status_code == 200
    assert resp.get_json()["expires_in"] == 300


# -- granted scope = requested ∩ registered ∩ role -------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "registered", "requested", "granted"),
    [
        (
            "clinical-system",
            "system/Patient.rs system/Observation.rs",
            "system/Patient.rs system/Condition.rs",
            "system/Patient.rs",
        ),
        (
            "clinical-system",
            "system/Patient.rs system/Observation.rs",
            "system/Observation.rs system/Patient.rs",
            "system/Observation.rs system/Patient.rs",
        ),
        ("clinical-system", "system/Patient.rs", "system/Patient.cruds", "system/Patient.rs"),
        ("clinical-system", "system/*.*", "system/Encounter.read", "system/Encounter.read"),
        (
            "clinical-system",
            "system/*.rs",
            "system/Encounter.write system/Encounter.rs",
            "system/Encounter.rs",
        ),
        # a client-credentials client never gets patient or user context, whatever it asks
        ("clinical-system", "system/*.* patient/*.rs", "patient/*.rs system/Patient.r", "system/Patient.r"),
        (
            "clinical-system",
            "system/Observation.rs?category=laboratory",
            "system/Observation.rs?category=laboratory",
            "system/Observation.rs?category=laboratory",
        ),
        # the role ceiling: an insurer never gets clinical types or writes, even when registered for them
        ("insurer", "system/*.*", "system/Coverage.cruds system/Observation.rs", "system/Coverage.rs"),
        (
            "insurer",
            "system/*.rs",
            "system/*.rs",
            "system/Patient.rs system/Coverage.rs system/Claim.rs system/ClaimResponse.rs "
            "system/ExplanationOfBenefit.rs",
        ),
        ("auditor", "system/*.*", "system/AuditEvent.rs system/Patient.rs", "system/AuditEvent.rs"),
    ],
)
def test_granted_scope_is_the_intersection(app, anonymous, role, registered, requested, granted):
    extra = {"organization": "Organization/INS"} if role == "insurer" else {}
    be = make_backend(app, role=role, scope=registered, **extra)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(), scope=requested))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["scope"] == granted
    assert unverified_payload(resp.get_json()["access_token"])["scope"] == granted


@pytest.mark.parametrize(
    ("role", "registered", "requested"),
    [
        ("clinical-system", "system/Patient.rs system/Observation.rs", "system/Condition.rs"),
        ("clinical-system", "system/Patient.rs", "patient/Patient.rs"),
        ("clinical-system", "system/Patient.rs", "user/Patient.rs"),
        ("clinical-system", "system/Patient.rs", "openid fhirUser"),
        ("clinical-system", "system/Patient.rs", "system/Patient.garbage"),
        ("clinical-system", "system/Observation.rs?category=laboratory", "system/Observation.rs"),
        ("insurer", "system/*.*", "system/Observation.rs"),
        ("auditor", "system/*.*", "system/Patient.rs"),
        ("admin", "system/*.*", "system/Patient.rs"),
    ],
)
def test_nothing_grantable_is_invalid_scope(app, anonymous, role, registered, requested):
    extra = {"organization": "Organization/INS"} if role == "insurer" else {}
    be = make_backend(app, role=role, scope=registered, **extra)
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(), scope=requested))
    assert_oauth_error(resp, 400, "invalid_scope")


@pytest.mark.parametrize("scope", [None, "", "   "])
def test_missing_scope_is_invalid_scope(backend, anonymous, scope):
    resp = anonymous.post("/auth/token", data=token_form(backend.assertion(), scope=scope))
    assert_oauth_error(resp, 400, "invalid_scope")


# -- errors per RFC 6749 section 5.2 -----------------------------------------------------------------------
def _alg_none(be: Backend, app) -> dict[str, str]:
    header = {"alg": "none", "typ": "JWT", "kid": be.key.kid}
    token = f"{b64url_json(header)}.{b64url_json(assertion_claims(be.client_id))}."
    return token_form(token)


def _hs256_with_public_key(be: Backend, app) -> dict[str, str]:
    """The classic algorithm confusion: HMAC keyed with the public key a verifier might hand to HS256."""
    public_pem = be.key.as_pem(private=False)
    header = {"alg": "HS256", "typ": "JWT", "kid": be.key.kid}
    signing_input = f"{b64url_json(header)}.{b64url_json(assertion_claims(be.client_id))}"
    mac = hmac.new(public_pem, signing_input.encode("ascii"), hashlib.sha256).digest()
    return token_form(f"{signing_input}.{b64url(mac)}")


def _hs256_with_public_jwk_json(be: Backend, app) -> dict[str, str]:
    secret = json.dumps(be.jwks["keys"][0]).encode()
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64url_json(header)}.{b64url_json(assertion_claims(be.client_id))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return token_form(f"{signing_input}.{b64url(mac)}")


def _other_key_same_kid(be: Backend, app) -> dict[str, str]:
    other, _ = new_client_key(be.alg)
    forged = client_assertion(other, be.client_id, TOKEN_URL, alg=be.alg, header={"kid": be.key.kid})
    return token_form(forged)


def _other_key(be: Backend, app) -> dict[str, str]:
    other, _ = new_client_key(be.alg)
    return token_form(client_assertion(other, be.client_id, TOKEN_URL, alg=be.alg))


def _tampered_claims(be: Backend, app) -> dict[str, str]:
    """A valid signature over other claims: swap in a payload naming another client."""
    victim = register_client(app, scope="system/*.*", jwks=be.jwks)
    head, _, sig = be.assertion().split(".")
    return token_form(f"{head}.{b64url_json(assertion_claims(victim))}.{sig}")


def _disabled(be: Backend, app) -> dict[str, str]:
    from fhir_api.auth.clients import set_disabled
    from fhir_api.db import new_session

    with app.app_context(), new_session() as s:
        set_disabled(s, be.client_id)
    return token_form(be.assertion())


def _unknown_client(be: Backend, app) -> dict[str, str]:
    return token_form(client_assertion(be.key, "no-such-client", TOKEN_URL, alg=be.alg))


CASES: list[tuple[str, Callable[[Backend, Any], dict[str, str]], int, str]] = [
    (
        "unsupported grant_type",
        lambda be, app: token_form(be.assertion(), grant_type="password"),
        400,
        "unsupported_grant_type",
    ),
    (
        "authorization_code for a backend client",
        lambda be, app: token_form(be.assertion(), grant_type="authorization_code", code="x"),
        400,
        "unauthorized_client",  # RFC 6749 5.2: a grant the server has, but not for this client
    ),
    (
        "missing grant_type",
        lambda be, app: {k: v for k, v in token_form(be.assertion()).items() if k != "grant_type"},
        400,
        "unsupported_grant_type",
    ),
    (
        "wrong client_assertion_type",
        lambda be, app: token_form(be.assertion(), client_assertion_type="urn:ietf:params:oauth:x"),
        400,
        "invalid_client",
    ),
    ("missing client_assertion", lambda be, app: token_form(None), 400, "invalid_client"),
    (
        "no client authentication at all",
        lambda be, app: {"grant_type": "client_credentials", "scope": "system/Patient.rs"},
        400,
        "invalid_client",
    ),
    (
        "client secret instead of a key",
        lambda be, app: {
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_id": be.client_id,
            "client_secret": "guess",
        },
        400,
        "invalid_client",
    ),
    ("malformed JWT", lambda be, app: token_form("not.a.jwt"), 400, "invalid_client"),
    ("two segments", lambda be, app: token_form("eyJhbGciOiJFUzM4NCJ9.e30"), 400, "invalid_client"),
    (
        "claims not an object",
        lambda be, app: token_form(f"{b64url_json({'alg': 'ES384'})}.{b64url(b'[1]')}.c2ln"),
        400,
        "invalid_client",
    ),
    ("unknown client", _unknown_client, 400, "invalid_client"),
    ("disabled client", _disabled, 400, "invalid_client"),
    (
        "client_id differs from iss",
        lambda be, app: token_form(be.assertion(), client_id="someone-else"),
        400,
        "invalid_client",
    ),
    ("signature by another key (same kid)", _other_key_same_kid, 400, "invalid_client"),
    ("signature by another key", _other_key, 400, "invalid_client"),
    ("claims swapped under a valid signature", _tampered_claims, 400, "invalid_client"),
    (
        "wrong aud",
        lambda be, app: token_form(be.assertion(aud="https://evil.example/token")),
        400,
        "invalid_client",
    ),
    ("aud is the FHIR base", lambda be, app: token_form(be.assertion(aud=FHIR_BASE)), 400, "invalid_client"),
    ("missing aud", lambda be, app: token_form(be.assertion(aud=None)), 400, "invalid_client"),
    ("iss != sub", lambda be, app: token_form(be.assertion(sub="someone-else")), 400, "invalid_client"),
    ("missing sub", lambda be, app: token_form(be.assertion(sub=None)), 400, "invalid_client"),
    (
        "exp in the past",
        lambda be, app: token_form(be.assertion(exp=int(time.time()) - 120)),
        400,
        "invalid_client",
    ),
    (
        "exp more than 5 minutes ahead",
        lambda be, app: token_form(be.assertion(exp=int(time.time()) + 600)),
        400,
        "invalid_client",
    ),
    ("missing exp", lambda be, app: token_form(be.assertion(exp=None)), 400, "invalid_client"),
    ("exp not a number", lambda be, app: token_form(be.assertion(exp="tomorrow")), 400, "invalid_client"),
    (
        "nbf in the future",
        lambda be, app: token_form(be.assertion(nbf=int(time.time()) + 120)),
        400,
        "invalid_client",
    ),
    ("missing jti", lambda be, app: token_form(be.assertion(jti=None)), 400, "invalid_client"),
    ("empty jti", lambda be, app: token_form(be.assertion(jti="")), 400, "invalid_client"),
    (
        "unregistered jku",
        lambda be, app: token_form(be.assertion(header={"jku": "https://evil.example/jwks.json"})),
        400,
        "invalid_client",
    ),
    ("alg none", _alg_none, 400, "invalid_client"),
    ("HS256 keyed with the public key PEM", _hs256_with_public_key, 400, "invalid_client"),
    ("HS256 keyed with the public JWK", _hs256_with_public_jwk_json, 400, "invalid_client"),
]


@pytest.mark.parametrize(("build", "status", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_token_request_errors(app, anonymous, backend, build, status, error):
    resp = anonymous.post("/auth/token", data=build(backend, app))
    assert_oauth_error(resp, status, error)
    assert "access_token" not in resp.get_json()


def test_token_request_needs_a_form_body(backend, anonymous):
    resp = anonymous.post("/auth/token", json=token_form(backend.assertion()))
    assert_oauth_error(resp, 400, "invalid_request")


def test_token_endpoint_is_post_only(backend, anonymous):
    resp = anonymous.get("/auth/token", query_string=token_form(backend.assertion()))
    assert resp.status_code == 405


def test_replayed_assertion_is_refused(backend, anonymous):
    assertion = backend.assertion()
    first = anonymous.post("/auth/token", data=token_form(assertion))
    assert first.status_code == 200, first.get_data(as_text=True)
    second = anonymous.post("/auth/token", data=token_form(assertion))
    assert_oauth_error(second, 400, "invalid_client")
    # a different assertion re-using the jti is a replay too
    jti = unverified_payload(assertion)["jti"]
    third = anonymous.post("/auth/token", data=token_form(backend.assertion(jti=jti)))
    assert_oauth_error(third, 400, "invalid_client")


def test_jti_is_per_client(app, anonymous):
    """Another client using the same jti value is not a replay of the first one's assertion."""
    one, two = make_backend(app), make_backend(app)
    assert anonymous.post("/auth/token", data=token_form(one.assertion(jti="shared"))).status_code == 200
    assert anonymous.post("/auth/token", data=token_form(two.assertion(jti="shared"))).status_code == 200


def test_refused_assertion_does_not_burn_its_jti(backend, anonymous):
    """A forged assertion must not let an attacker pre-empt a client's future jti (denial of service)."""
    other, _ = new_client_key(backend.alg)
    forged = client_assertion(other, backend.client_id, TOKEN_URL, alg=backend.alg, jti="future-jti")
    assert anonymous.post("/auth/token", data=token_form(forged)).status_code == 400
    resp = anonymous.post("/auth/token", data=token_form(backend.assertion(jti="future-jti")))
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_disabled_client_can_be_enabled_again(app, backend, anonymous):
    from fhir_api.auth.clients import set_disabled
    from fhir_api.db import new_session

    with app.app_context(), new_session() as s:
        set_disabled(s, backend.client_id)
    assert_oauth_error(
        anonymous.post("/auth/token", data=token_form(backend.assertion())), 400, "invalid_client"
    )
    with app.app_context(), new_session() as s:
        set_disabled(s, backend.client_id, False)
    assert anonymous.post("/auth/token", data=token_form(backend.assertion())).status_code == 200


# -- client keys from a JWKS URL -----------------------------------------------------------------------------
@pytest.fixture
def resolver(monkeypatch) -> list[str]:
    """DNS for jwks_fetch only: every host resolves to a public address (there is no network here)."""
    looked_up: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC_ADDRESS, port))]

    fake = SimpleNamespace(getaddrinfo=getaddrinfo, IPPROTO_TCP=socket.IPPROTO_TCP)
    monkeypatch.setattr(outbound, "socket", fake)
    return looked_up


def _url_backend(app, url: str = JWKS_URL) -> Backend:
    key, jwks = new_client_key("ES384")
    client_id = register_client(app, scope="system/Patient.rs", jwks_url=url)
    return Backend(client_id, key, jwks, "ES384")


def test_jwks_url_is_fetched_and_cached(app, anonymous, resolver):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False
    be = _url_backend(app)
    with requests_mock.Mocker() as m:
        m.get(JWKS_URL, json=be.jwks, headers={"Cache-Control": "public, max-age=600"})
        first = anonymous.post("/auth/token", data=token_form(be.assertion(header={"jku": JWKS_URL})))
        assert first.status_code == 200, first.get_data(as_text=True)
        assert m.call_count == 1
        second = anonymous.post("/auth/token", data=token_form(be.assertion()))
        assert second.status_code == 200, second.get_data(as_text=True)
        assert m.call_count == 1  # served from the cache while max-age lasts
    assert resolver == ["keys.example.org"]


def test_jwks_url_with_no_store_is_fetched_every_time(app, anonymous, resolver):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False
    be = _url_backend(app)
    with requests_mock.Mocker() as m:
        m.get(JWKS_URL, json=be.jwks, headers={"Cache-Control": "no-store"})
        for _ in range(2):
            assert anonymous.post("/auth/token", data=token_form(be.assertion())).status_code == 200
        assert m.call_count == 2


def test_jwks_url_key_not_in_set_is_refused(app, anonymous, resolver):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False
    be = _url_backend(app)
    _, other_jwks = new_client_key("ES384")
    with requests_mock.Mocker() as m:
        m.get(JWKS_URL, json=other_jwks, headers={"Cache-Control": "max-age=600"})
        assert_oauth_error(
            anonymous.post("/auth/token", data=token_form(be.assertion())), 400, "invalid_client"
        )


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"status_code": 302, "headers": {"Location": "http://169.254.169.254/latest"}}, "redirect"),
        ({"status_code": 500}, "server error"),
        ({"text": "<html>not json</html>"}, "not JSON"),
        ({"json": {"not": "a key set"}}, "not a JWK Set"),
        ({"json": {"keys": [{"kty": "EC"}]}}, "broken key"),
        ({"content": b'{"keys": [' + b" " * (70 * 1024) + b"]}"}, "too large"),
    ],
)
def test_bad_jwks_url_answers_are_refused(app, anonymous, resolver, answer, why):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False
    be = _url_backend(app)
    with requests_mock.Mocker() as m:
        m.get(JWKS_URL, **answer)
        resp = anonymous.post("/auth/token", data=token_form(be.assertion()))
        assert_oauth_error(resp, 400, "invalid_client")
        assert m.call_count == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/jwks.json",
        "https://[::1]/jwks.json",
        "https://10.1.2.3/jwks.json",
        "https://169.254.169.254/latest/meta-data",
        "https://192.168.0.10/jwks.json",
        "http://keys.example.org/jwks.json",  # https only, when private addresses are refused
    ],
)
def test_jwks_url_at_private_address_is_refused(app, anonymous, url):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False
    be = _url_backend(app, url)
    with requests_mock.Mocker() as m:
        m.get(requests_mock.ANY, json=be.jwks)
        resp = anonymous.post("/auth/token", data=token_form(be.assertion()))
        assert_oauth_error(resp, 400, "invalid_client")
        assert m.call_count == 0  # refused before any request is made


def test_public_name_resolving_to_private_address_is_refused(app, anonymous, monkeypatch):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = False

    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC_ADDRESS, port)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(outbound, "socket", SimpleNamespace(getaddrinfo=getaddrinfo, IPPROTO_TCP=6))
    be = _url_backend(app)
    with requests_mock.Mocker() as m:
        m.get(requests_mock.ANY, json=be.jwks)
        assert_oauth_error(
            anonymous.post("/auth/token", data=token_form(be.assertion())), 400, "invalid_client"
        )
        assert m.call_count == 0


def test_private_jwks_url_allowed_when_configured(app, anonymous):
    app.config["AUTH_JWKS_ALLOW_PRIVATE"] = True
    url = "http://127.0.0.1:9999/jwks.json"
    be = _url_backend(app, url)
    with requests_mock.Mocker() as m:
        m.get(url, json=be.jwks)
        resp = anonymous.post("/auth/token", data=token_form(be.assertion()))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert m.call_count == 1


def test_inline_keys_client_refuses_any_jku(backend, anonymous):
    """With inline keys there is no registered JWKS URL, so a jku (even a plausible one) is refused."""
    resp = anonymous.post("/auth/token", data=token_form(backend.assertion(header={"jku": JWKS_URL})))
    assert_oauth_error(resp, 400, "invalid_client")


# -- bearer tokens on the data endpoints --------------------------------------------------------------------
def forge_access_token(
    app, *, key: Any = None, header: dict[str, Any] | None = None, **overrides: Any
) -> str:
    """An access token built by hand: by default exactly what the server issues (so each override is the
    only reason a refusal can have)."""
    from fhir_api.auth import tokens

    with app.test_request_context():
        key = key or signing_key(app)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": tokens.issuer(),
            "sub": "forger",
            "aud": FHIR_BASE,
            "client_id": "forger",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "scope": "system/*.*",
            "role": "clinical-system",
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        jose = {"alg": "RS256", "typ": "at+jwt", "kid": signing_key(app).kid, **(header or {})}
        return jwt.encode(jose, claims, key, algorithms=[jose["alg"]])


def test_forged_token_control_is_accepted(app, anonymous):
    """The control for the table below: the hand-built token, unmodified, works."""
    resp = anonymous.get("/fhir/R4/Patient", headers=bearer(forge_access_token(app)))
    assert resp.status_code == 200, resp.get_data(as_text=True)


def _none_alg_token(app) -> str:
    payload = unverified_payload(forge_access_token(app))
    return f"{b64url_json({'alg': 'none', 'typ': 'at+jwt'})}.{b64url_json(payload)}."


def _hs256_server_public_key(app) -> str:
    with app.test_request_context():
        public_pem = signing_key(app).as_pem(private=False)
    payload = unverified_payload(forge_access_token(app))
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'at+jwt'})}.{b64url_json(payload)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _client_assertion_as_bearer(app) -> str:
    key, _ = new_client_key("RS384")
    return client_assertion(key, "forger", TOKEN_URL, alg="RS384")


BAD_BEARERS: list[tuple[str, Callable[[Any], str]]] = [
    ("garbage", lambda app: "garbage"),
    ("three garbage segments", lambda app: "a.b.c"),
    ("wrong audience", lambda app: forge_access_token(app, aud="https://other.example/fhir/R4")),
    ("audience is the token endpoint", lambda app: forge_access_token(app, aud=TOKEN_URL)),
    ("no audience", lambda app: forge_access_token(app, aud=None)),
    ("expired", lambda app: forge_access_token(app, exp=int(time.time()) - 5)),
    ("no exp", lambda app: forge_access_token(app, exp=None)),
    ("other issuer", lambda app: forge_access_token(app, iss="https://evil.example/auth")),
    ("typ JWT, not at+jwt", lambda app: forge_access_token(app, header={"typ": "JWT"})),
    ("no scope claim", lambda app: forge_access_token(app, scope=None)),
    ("no client_id claim", lambda app: forge_access_token(app, client_id=None)),
    ("no jti", lambda app: forge_access_token(app, jti=None)),
    ("signed by another key", lambda app: forge_access_token(app, key=RSAKey.generate_key(2048))),
    ("alg none", _none_alg_token),
    ("HS256 keyed with the server's public key", _hs256_server_public_key),
    ("a client assertion", _client_assertion_as_bearer),
]


@pytest.mark.parametrize("build", [b[1] for b in BAD_BEARERS], ids=[b[0] for b in BAD_BEARERS])
def test_bad_bearer_tokens_get_401(app, anonymous, build):
    resp = anonymous.get("/fhir/R4/Patient", headers=bearer(build(app)))
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    assert resp.get_json()["issue"][0]["code"] == "login"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["none", "empty", "scheme only", "blank token", "basic"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/R4/Patient"),
        ("GET", "/fhir/R4/Patient/x"),
        ("GET", "/fhir/R4"),
        ("GET", "/fhir/R4/_history"),
        ("POST", "/fhir/R4/Patient"),
        ("DELETE", "/fhir/R4/Patient/x"),
        ("POST", "/fhir/R4/Patient/_search"),
        ("GET", "/fhir/R4/Patient/x/Observation"),
    ],
)
def test_no_token_gets_401_with_challenge(anonymous, headers, method, path):
    resp = anonymous.open(path, method=method, headers=headers)
    assert resp.status_code == 401, resp.get_data(as_text=True)
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge  # RFC 6750 3.1: no error code when no credentials were sent
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_bearer_scheme_is_case_insensitive(app, anonymous):
    token = mint_token(app)
    assert anonymous.get("/fhir/R4/Patient", headers={"Authorization": f"bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    ("scope", "method", "path", "status"),
    [
        ("system/Patient.r", "GET", "/fhir/R4/Patient", 403),
        ("system/Patient.s", "GET", "/fhir/R4/Patient", 200),
        ("system/Patient.s", "GET", "/fhir/R4/Patient/nope", 403),
        ("system/Patient.r", "GET", "/fhir/R4/Patient/nope", 404),
        ("system/Patient.rs", "POST", "/fhir/R4/Patient", 403),
        ("system/Patient.rs", "DELETE", "/fhir/R4/Patient/nope", 403),
        ("system/Patient.rs", "GET", "/fhir/R4/Observation", 403),
        ("system/Patient.rs", "GET", "/fhir/R4/Patient/_history", 200),
        ("system/Patient.r", "GET", "/fhir/R4/Patient/_history", 403),
        ("system/Patient.cud", "GET", "/fhir/R4", 403),
    ],
)
def test_scope_letters_checked_per_interaction(app, anonymous, scope, method, path, status):
    token = mint_token(app, scope=scope)
    body = {"resourceType": "Patient"} if method == "POST" else None
    resp = anonymous.open(path, method=method, headers=bearer(token), json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    if status == 403:
        assert resp.get_json()["issue"][0]["code"] == "forbidden"


# -- revocation and introspection ----------------------------------------------------------------------------
def _issue_via_endpoint(anonymous, be: Backend, scope: str = "system/Patient.rs") -> dict[str, Any]:
    resp = anonymous.post("/auth/token", data=token_form(be.assertion(), scope=scope))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_introspection_matches_what_was_issued(backend, anonymous):
    issued = _issue_via_endpoint(anonymous, backend)
    token = issued["access_token"]
    resp = anonymous.post("/auth/introspect", data={"token": token}, headers=bearer(token))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    claims = unverified_payload(token)
    assert body["active"] is True
    assert body["scope"] == issued["scope"] == "system/Patient.rs"
    assert body["client_id"] == backend.client_id
    assert body["sub"] == backend.client_id
    assert body["exp"] == claims["exp"]
    assert 0 < body["exp"] - int(time.time()) <= 300
    assert body["jti"] == claims["jti"]
    assert body["iss"] == "http://localhost/auth"
    assert body["aud"] == FHIR_BASE
    assert body["token_type"].lower() == "bearer"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c"], ids=["empty", "garbage", "three segments"])
def test_introspecting_garbage_is_inactive(app, anonymous, token):
    resp = anonymous.post("/auth/introspect", data={"token": token}, headers=bearer(mint_token(app)))
    assert resp.status_code == 200
    assert resp.get_json() == {"active": False}


def test_introspecting_an_expired_token_is_inactive(app, anonymous):
    expired = forge_access_token(app, client_id="c1", exp=int(time.time()) - 5)
    caller = mint_token(app, client_id="c1")
    resp = anonymous.post("/auth/introspect", data={"token": expired}, headers=bearer(caller))
    assert resp.get_json() == {"active": False}


def test_introspection_and_revocation_need_a_bearer_token(app, anonymous):
    token = mint_token(app)
    for path in ("/auth/introspect", "/auth/revoke"):
        resp = anonymous.post(path, data={"token": token})
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        resp = anonymous.post(path, data={"token": token}, headers=bearer("garbage"))
        assert resp.status_code == 401, path
    # nothing was revoked by the refused call
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200


def test_introspecting_another_clients_token_is_inactive(app, anonymous):
    theirs = mint_token(app, client_id="victim", scope="system/*.rs")
    mine = mint_token(app, client_id="attacker")
    resp = anonymous.post("/auth/introspect", data={"token": theirs}, headers=bearer(mine))
    assert resp.status_code == 200
    assert resp.get_json() == {"active": False}
    # an administrator may introspect anyone's token
    admin = mint_token(app, client_id="ops", role="admin", scope="")
    resp = anonymous.post("/auth/introspect", data={"token": theirs}, headers=bearer(admin))
    assert resp.get_json()["active"] is True
    assert resp.get_json()["client_id"] == "victim"


def test_revoked_token_is_refused_at_once(app, anonymous):
    token = mint_token(app, client_id="c1")
    sibling = mint_token(app, client_id="c1")
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200  # now cached as valid
    before = anonymous.post("/auth/introspect", data={"token": token}, headers=bearer(sibling))
    assert before.get_json()["active"] is True

    resp = anonymous.post("/auth/revoke", data={"token": token}, headers=bearer(token))
    assert resp.status_code == 200

    refused = anonymous.get("/fhir/R4/Patient", headers=bearer(token))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    after = anonymous.post("/auth/introspect", data={"token": token}, headers=bearer(sibling))
    assert after.status_code == 200
    assert after.get_json() == {"active": False}
    # a revoked token cannot introspect or revoke anything any more
    assert (
        anonymous.post("/auth/introspect", data={"token": sibling}, headers=bearer(token)).status_code == 401
    )
    # revoking again is harmless; the sibling token of the same client still works
    assert anonymous.post("/auth/revoke", data={"token": token}, headers=bearer(sibling)).status_code == 200
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(sibling)).status_code == 200


def test_revoked_token_from_the_token_endpoint(backend, anonymous):
    token = _issue_via_endpoint(anonymous, backend)["access_token"]
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 200
    assert anonymous.post("/auth/revoke", data={"token": token}, headers=bearer(token)).status_code == 200
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(token)).status_code == 401


def test_revoking_another_clients_token_does_nothing(app, anonymous):
    victim = mint_token(app, client_id="victim")
    attacker = mint_token(app, client_id="attacker")
    resp = anonymous.post("/auth/revoke", data={"token": victim}, headers=bearer(attacker))
    assert resp.status_code == 200  # RFC 7009: no oracle
    assert anonymous.get("/fhir/R4/Patient", headers=bearer(victim)).status_code == 200


@pytest.mark.parametrize("token", ["", "garbage"], ids=["empty", "garbage"])
def test_revoking_garbage_is_200(app, anonymous, token):
    resp = anonymous.post("/auth/revoke", data={"token": token}, headers=bearer(mint_token(app)))
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "path", ["/fhir/R4/metadata", "/fhir/R4/.well-known/smart-configuration", "/auth/jwks"]
)
def test_documents_about_the_server_may_be_cached_but_data_may_not(anonymous, client, path):
    assert "public" in anonymous.get(path).headers["Cache-Control"]
    assert client.get("/fhir/R4/Patient").headers["Cache-Control"] == "no-store"


def test_discovery_claims_only_what_is_served(anonymous):
    doc = anonymous.get("/fhir/R4/.well-known/smart-configuration").get_json()
    assert doc["grant_types_supported"] == ["authorization_code", "client_credentials", "refresh_token"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["authorization_endpoint"] == "http://localhost/auth/authorize"
    security = anonymous.get("/fhir/R4/metadata").get_json()["rest"][0]["security"]
    assert security["cors"] is False  # no CORS headers are served yet


def test_an_admin_client_gets_an_admin_token_that_reads_no_data_but_may_revoke_any(app):
    admin = make_backend(app, scope="admin", role="admin")
    other = make_backend(app)
    http = app.test_client()
    granted = http.post("/auth/token", data=token_form(admin.assertion(), scope="admin system/*.rs"))
    assert granted.status_code == 200, granted.get_json()
    assert granted.get_json()["scope"] == "admin"  # nothing clinical, whatever is asked
    admin_token = granted.get_json()["access_token"]
    assert http.get("/fhir/R4/Patient", headers=bearer(admin_token)).status_code == 403
    victim = http.post("/auth/token", data=token_form(other.assertion())).get_json()["access_token"]
    seen = http.post("/auth/introspect", data={"token": victim}, headers=bearer(admin_token)).get_json()
    assert seen["active"] is True and seen["client_id"] == other.client_id
    assert http.post("/auth/revoke", data={"token": victim}, headers=bearer(admin_token)).status_code == 200
    assert http.get("/fhir/R4/Patient", headers=bearer(victim)).status_code == 401
