"""SMART App Launch end to end through HTTP: sign-in, consent and patient picker pages, authorization codes
with PKCE (S256), id tokens, refresh tokens, EHR launch; and what Inferno checks of them."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from audit.models import AuditRow
from fhir_api import db
from fhir_api.auth.users import add_user
from tests.helpers import mint_token, patient, register_client

REDIRECT = "https://app.example.org/callback"
AUD = "http://localhost/fhir/R4"
PASSWORD = "correct horse battery"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class App:
    client_id: str
    scope: str


@pytest.fixture
def world(app, client):
    """Two patients, a clinician and a patient user, a clinician app and a patient app (both public)."""
    for pid, family in (("pat-a", "Ashworth"), ("pat-b", "Brackley")):
        resp = client.put(f"/fhir/R4/Patient/{pid}", json=patient(id=pid, name=[{"family": family}]))
        assert resp.status_code == 201
    with app.app_context(), db.new_session() as s:
        add_user(s, "dr-hart", PASSWORD, "clinician", "Practitioner/prac-1", "Dr Hart")
        add_user(s, "alice", PASSWORD, "patient", "Patient/pat-a", "Alice Ashworth")
    clinician = "openid fhirUser launch launch/patient offline_access user/*.rs patient/*.rs"
    patient_scope = "openid fhirUser launch/patient offline_access online_access patient/*.rs"
    return {
        "clinician": App(
            register_client(app, role="clinician", scope=clinician, redirect_uris=(REDIRECT,), public=True),
            clinician,
        ),
        "patient": App(
            register_client(app, role="patient", scope=patient_scope, redirect_uris=(REDIRECT,), public=True),
            patient_scope,
        ),
    }


def params(app: App, challenge: str | None, scope: str | None = None, **extra: Any) -> dict[str, str]:
    out = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": REDIRECT,
        "scope": scope or app.scope,
        "state": "state-123",
        "aud": AUD,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return {k: v for k, v in out.items() if v is not None}


def redirected(resp) -> dict[str, str]:
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def sign_in(http, query: dict[str, str], username: str, **consent: str):
    page = http.get("/auth/authorize", query_string=query)
    assert page.status_code == 200 and 'name="password"' in page.get_data(as_text=True)
    consent_page = http.post(
        "/auth/authorize",
        query_string=query,
        data={"step": "login", "username": username, "password": PASSWORD},
    )
    assert consent_page.status_code == 200, consent_page.get_data(as_text=True)[:500]
    html = consent_page.get_data(as_text=True)
    ticket = re.search(r'name="ticket" value="([^"]+)"', html).group(1)
    return http.post(
        "/auth/authorize",
        query_string=query,
        data={"step": "consent", "ticket": ticket, "decision": "allow", **consent},
    ), html


def code_for(http, app: App, username: str, verifier_challenge=None, **extra: str) -> tuple[str, str]:
    verifier, challenge = verifier_challenge or pkce()
    consent = {k: v for k, v in extra.items() if k == "patient"}
    query = params(app, challenge, **{k: v for k, v in extra.items() if k != "patient"})
    resp, _ = sign_in(http, query, username, **consent)
    got = redirected(resp)
    assert got["state"] == "state-123"
    return got["code"], verifier


def redeem(http, app: App, code: str, verifier: str | None, **extra: str):
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": app.client_id,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(extra)
    return http.post("/auth/token", data=form)


def test_discovery_announces_app_launch(anonymous):
    conf = anonymous.get("/fhir/R4/.well-known/smart-configuration").get_json()
    assert conf["authorization_endpoint"] == "http://localhost/auth/authorize"
    assert conf["code_challenge_methods_supported"] == ["S256"]  # never plain
    assert conf["issuer"] == "http://localhost/auth"  # present because the server signs id tokens (SSO)
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(conf["grant_types_supported"])
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "sso-openid-connect",
        "context-ehr-patient",
    ):
        assert capability in conf["capabilities"]
    security = anonymous.get("/fhir/R4/metadata").get_json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == "http://localhost/auth/authorize"


def test_standalone_patient_launch_end_to_end(app, world, anonymous):
    http = app.test_client()
    nonce = secrets.token_hex(8)
    code, verifier = code_for(http, world["patient"], "alice", nonce=nonce)
    resp = redeem(http, world["patient"], code, verifier)
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    body = resp.get_json()
    assert body["token_type"].lower() == "bearer" and 0 < body["expires_in"] <= 300
    assert body["patient"] == "pat-a" and body["need_patient_banner"] is True
    assert set(body["scope"].split()) >= {"openid", "fhirUser", "launch/patient", "patient/*.rs"}
    assert body["refresh_token"]

    keys = KeySet.import_key_set(anonymous.get("/auth/jwks").get_json())
    claims = jwt.decode(body["id_token"], keys).claims
    assert claims["iss"] == "http://localhost/auth" and claims["aud"] == world["patient"].client_id
    assert claims["fhirUser"] == "http://localhost/fhir/R4/Patient/pat-a"
    assert claims["sub"] == "alice" and claims["nonce"] == nonce

    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get("/fhir/R4/Patient/pat-a", headers=bearer).status_code == 200
    assert http.get("/fhir/R4/Patient/pat-b", headers=bearer).status_code == 404  # not her record
    search = http.get("/fhir/R4/Patient", headers=bearer).get_json()
    assert [e["resource"]["id"] for e in search["entry"]] == ["pat-a"]
    assert http.post("/fhir/R4/Patient", json=patient(), headers=bearer).status_code == 403  # patients read

    intro = http.post("/auth/introspect", data={"token": body["access_token"]}, headers=bearer).get_json()
    assert intro["active"] is True and intro["patient"] == "pat-a" and intro["fhirUser"] == "Patient/pat-a"


def test_clinician_picks_a_patient(app, world):
    http = app.test_client()
    verifier, challenge = pkce()
    query = params(world["clinician"], challenge)
    resp, consent_html = sign_in(http, query, "dr-hart", patient="pat-b")
    assert "Ashworth" in consent_html and "Brackley" in consent_html  # the picker lists what Dr Hart may see
    got = redirected(resp)
    body = redeem(http, world["clinician"], got["code"], verifier).get_json()
    assert body["patient"] == "pat-b"
    claims = jwt.decode(body["id_token"], KeySet.import_key_set(http.get("/auth/jwks").get_json())).claims
    assert claims["fhirUser"].endswith("/Practitioner/prac-1")
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get("/fhir/R4/Patient/pat-a", headers=bearer).status_code == 200  # user/*.rs: all patients


def test_a_picked_patient_must_exist(app, world):
    http = app.test_client()
    _, challenge = pkce()
    resp, _ = sign_in(http, params(world["clinician"], challenge), "dr-hart", patient="no-such-patient")
    assert resp.status_code == 200 and "Choose a patient" in resp.get_data(as_text=True)


def test_ehr_launch_carries_the_ehr_context(app, world):
    http = app.test_client()
    ehr = {"Authorization": f"Bearer {mint_token(app, client_id='the-ehr')}"}
    launch = http.post("/auth/launch", json={"patient": "pat-b", "encounter": "enc-9"}, headers=ehr)
    assert launch.status_code == 200
    launch_id = launch.get_json()["launch"]
    code, verifier = code_for(http, world["clinician"], "dr-hart", launch=launch_id)
    body = redeem(http, world["clinician"], code, verifier).get_json()
    assert body["patient"] == "pat-b" and body["encounter"] == "enc-9"

    _, challenge = pkce()
    unknown = http.get("/auth/authorize", query_string=params(world["clinician"], challenge, launch="forged"))
    assert redirected(unknown)["error"] == "invalid_request"
    patient_token = {"Authorization": f"Bearer {mint_token(app, role='patient', scope='patient/*.rs')}"}
    assert http.post("/auth/launch", json={"patient": "pat-a"}, headers=patient_token).status_code == 400


def test_pkce_failures(app, world):
    http = app.test_client()
    missing = http.get("/auth/authorize", query_string=params(world["patient"], None))
    assert redirected(missing)["error"] == "invalid_request"
    _, challenge = pkce()
    plain = http.get(
        "/auth/authorize", query_string=params(world["patient"], challenge, code_challenge_method="plain")
    )
    assert redirected(plain)["error"] == "invalid_request"
    no_method = params(world["patient"], challenge)
    del no_method["code_challenge_method"]
    assert redirected(http.get("/auth/authorize", query_string=no_method))["error"] == "invalid_request"

    code, verifier = code_for(http, world["patient"], "alice")
    assert redeem(http, world["patient"], code, None).get_json()["error"] == "invalid_request"
    code, verifier = code_for(http, world["patient"], "alice")
    assert redeem(http, world["patient"], code, pkce()[0]).get_json()["error"] == "invalid_grant"
    verifier, challenge = pkce()
    code, _ = code_for(http, world["patient"], "alice", verifier_challenge=(verifier, challenge))
    assert (
        redeem(http, world["patient"], code, challenge).get_json()["error"] == "invalid_grant"
    )  # == challenge


def test_a_code_is_single_use(app, world):
    http = app.test_client()
    code, verifier = code_for(http, world["patient"], "alice")
    assert redeem(http, world["patient"], code, verifier).status_code == 200
    again = redeem(http, world["patient"], code, verifier)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_wrong_aud_bad_redirect_wrong_password_and_denial(app, world):
    http = app.test_client()
    _, challenge = pkce()
    wrong_aud = http.get(
        "/auth/authorize", query_string=params(world["patient"], challenge, aud="https://evil/fhir")
    )
    got = redirected(wrong_aud)
    assert got["error"] == "invalid_request" and "aud" in got["error_description"]

    bad_redirect = params(world["patient"], challenge, redirect_uri="https://evil.example.com/cb")
    page = http.get("/auth/authorize", query_string=bad_redirect)
    assert page.status_code == 400 and "Location" not in page.headers  # never redirect to an unregistered URI

    query = params(world["patient"], challenge)
    wrong = http.post(
        "/auth/authorize", query_string=query, data={"step": "login", "username": "alice", "password": "nope"}
    )
    assert wrong.status_code == 401 and "wrong password" in wrong.get_data(as_text=True)
    assert wrong.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in wrong.headers["Content-Security-Policy"]
    clinician_in_patient_app = http.post(
        "/auth/authorize",
        query_string=query,
        data={"step": "login", "username": "dr-hart", "password": PASSWORD},
    )
    assert clinician_in_patient_app.status_code == 401

    forged = http.post(
        "/auth/authorize",
        query_string=query,
        data={"step": "consent", "ticket": "forged", "decision": "allow"},
    )
    assert forged.status_code == 401 and 'name="password"' in forged.get_data(as_text=True)

    consent_html = http.post(
        "/auth/authorize",
        query_string=query,
        data={"step": "login", "username": "alice", "password": PASSWORD},
    ).get_data(as_text=True)
    ticket = re.search(r'name="ticket" value="([^"]+)"', consent_html).group(1)
    denied = http.post(
        "/auth/authorize", query_string=query, data={"step": "consent", "ticket": ticket, "decision": "deny"}
    )
    assert redirected(denied)["error"] == "access_denied"
    other_request = params(world["patient"], pkce()[1])  # a ticket only answers the request it was made for
    replayed = http.post(
        "/auth/authorize",
        query_string=other_request,
        data={"step": "consent", "ticket": ticket, "decision": "allow"},
    )
    assert replayed.status_code == 401 and 'name="password"' in replayed.get_data(as_text=True)


def test_refresh_tokens_rotate(app, world):
    http = app.test_client()
    code, verifier = code_for(http, world["patient"], "alice")
    first = redeem(http, world["patient"], code, verifier).get_json()
    form = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": world["patient"].client_id,
    }
    second = http.post("/auth/token", data=form)
    assert second.status_code == 200, second.get_json()
    body = second.get_json()
    assert body["access_token"] != first["access_token"] and body["refresh_token"] != first["refresh_token"]
    assert body["patient"] == "pat-a"
    assert second.headers["Cache-Control"] == "no-store"
    reused = http.post("/auth/token", data=form)
    assert reused.status_code == 400 and reused.get_json()["error"] == "invalid_grant"
    other = register_client(
        app, role="patient", scope=world["patient"].scope, redirect_uris=(REDIRECT,), public=True
    )
    stolen = http.post(
        "/auth/token", data={**form, "refresh_token": body["refresh_token"], "client_id": other}
    )
    assert stolen.status_code == 400 and stolen.get_json()["error"] == "invalid_grant"


def test_no_refresh_token_without_offline_or_online_access(app, world):
    http = app.test_client()
    code, verifier = code_for(http, world["patient"], "alice", scope="launch/patient patient/Patient.rs")
    body = redeem(http, world["patient"], code, verifier).get_json()
    assert "refresh_token" not in body and "id_token" not in body
    assert body["scope"] == "launch/patient patient/Patient.rs"


def test_sign_ins_are_audited(app, world):
    engine = app.extensions["fhir_db"]["engine"]
    with engine.connect() as conn:
        start = conn.execute(select(func.coalesce(func.max(AuditRow.pos), 0))).scalar_one()
    http = app.test_client()
    code_for(http, world["patient"], "alice")
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditRow.subtype, AuditRow.outcome, AuditRow.client_id).where(AuditRow.pos > start)
        ).all()
    assert {r.client_id for r in rows} == {world["patient"].client_id}
    assert len([r for r in rows if r.subtype == "110122"]) == 3  # the login page, the sign-in, the consent
