"""SMART App Launch: the authorization endpoint (login, consent, patient picker), authorization codes with
PKCE (S256 only), refresh tokens, ``openid fhirUser`` id tokens and EHR launch contexts.

The grants plug into authlib's authorization server (``fhir_api.auth.server``). Codes and refresh tokens are
kept by their SHA-256 only, so a database dump holds nothing that can be redeemed. The pages carry no
session cookie: each step's state is a signed, short-lived ticket in the form, bound to the authorization
request it answers, so a forged or replayed form fails.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Response, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from sqlalchemy import delete

from audit.recorder import note_actor, note_detail
from fhir_api import db
from fhir_api.auth import tokens, users
from fhir_api.auth.keys import SIGNING_ALG, signing_key
from fhir_api.auth.models import AuthCode, AuthUser, LaunchContext, RefreshToken
from fhir_api.http import base_url

CODE_LIFETIME = 120  # seconds; RFC 6749 recommends at most 10 minutes
TICKET_LIFETIME = 600  # the login and consent pages
REFRESH_LIFETIME = {"offline_access": timedelta(days=30), "online_access": timedelta(hours=8)}
LAUNCH_LIFETIME = timedelta(minutes=10)
ID_TOKEN_LIFETIME = 300
CLIENT_AUTH = ["none", "private_key_jwt"]  # public apps (PKCE) and confidential apps (their keys)
PICKER_CLIENT = "fhir-api-patient-picker"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grantee:
    """Who granted the authorization and the context chosen: what the token generator needs."""

    username: str
    role: str
    fhir_user: str
    name: str | None = None
    patient: str | None = None
    encounter: str | None = None
    nonce: str | None = None


class StoredCode:
    """authlib's view of a stored authorization code."""

    def __init__(self, row: AuthCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class StoredRefresh:
    def __init__(self, row: RefreshToken) -> None:
        self.row = row

    def get_scope(self) -> str:
        return self.row.scope

    def check_client(self, client: Any) -> bool:
        return client.get_client_id() == self.row.client_id

    def is_expired(self) -> bool:
        return self.row.expires_at <= db.now()

    def is_revoked(self) -> bool:
        return self.row.revoked


class S256Only(CodeChallenge):
    """PKCE as SMART 2 requires it: a challenge on every request, S256 only (never ``plain``, never a
    missing method that would default to it)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (authlib's class attribute)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        if grant.request.payload.data.get("code_challenge") and not grant.request.payload.data.get(
            "code_challenge_method"
        ):
            raise InvalidRequestError("code_challenge_method is required and must be S256")
        super().validate_code_challenge(grant, redirect_uri)


def _grantee(session: Any, username: str, **context: Any) -> Grantee | None:
    user = users.get_user(session, username)
    if user is None:
        return None
    return Grantee(user.username, user.role, user.fhir_user, user.name, **context)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

    def save_authorization_code(self, code: str, req: Any) -> None:
        user: Grantee = req.user
        data = req.payload.data
        session = db.session()
        with db.write_transaction(session):
            session.add(
                AuthCode(
                    code_hash=digest(code),
                    client_id=req.client.get_client_id(),
                    username=user.username,
                    redirect_uri=req.payload.redirect_uri or req.client.get_default_redirect_uri(),
                    scope=req.scope or "",
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    nonce=data.get("nonce"),
                    patient=user.patient,
                    encounter=user.encounter,
                    expires_at=db.now() + timedelta(seconds=CODE_LIFETIME),
                )
            )

    def query_authorization_code(self, code: str, client: Any) -> StoredCode | None:
        row = db.session().get(AuthCode, digest(code or ""))
        if row is None or row.client_id != client.get_client_id() or row.expires_at <= db.now():
            return None
        return StoredCode(row)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Single use: the row goes before the response leaves (a second redemption finds nothing)."""
        session = db.session()
        with db.write_transaction(session):
            deleted = session.execute(
                delete(AuthCode).where(AuthCode.code_hash == authorization_code.row.code_hash)
            ).rowcount
        if deleted != 1:  # redeemed concurrently by another request
            raise InvalidGrantError("the authorization code was already used")

    def authenticate_user(self, authorization_code: StoredCode) -> Grantee | None:
        row = authorization_code.row
        return _grantee(
            db.session(), row.username, patient=row.patient, encounter=row.encounter, nonce=row.nonce
        )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every use returns a new one and retires the old

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefresh | None:
        row = db.session().get(RefreshToken, digest(refresh_token or ""))
        if row is None or row.revoked or row.expires_at <= db.now():
            return None
        return StoredRefresh(row)

    def authenticate_user(self, credential: StoredRefresh) -> Grantee | None:
        row = credential.row
        return _grantee(db.session(), row.username, patient=row.patient, encounter=row.encounter)

    def revoke_old_credential(self, credential: StoredRefresh) -> None:
        session = db.session()
        with db.write_transaction(session):
            row = session.get(RefreshToken, credential.row.token_hash, with_for_update=True)
            if row is None or row.revoked:
                raise InvalidGrantError("the refresh token was already used")
            row.revoked = True


def extend_token(
    body: dict[str, Any], client: Any, user: Grantee, scope: str, claims: dict[str, Any]
) -> None:
    """The App Launch parts of a token response: launch context, id token, refresh token."""
    granted = scope.split()
    if user.patient:
        body["patient"] = user.patient
        body["need_patient_banner"] = True
    if user.encounter:
        body["encounter"] = user.encounter
    if "openid" in granted and ("fhirUser" in granted or "profile" in granted):
        body["id_token"] = id_token(client.get_client_id(), user)
    refresh = next((s for s in ("offline_access", "online_access") if s in granted), None)
    if refresh is not None:
        token = secrets.token_urlsafe(32)
        session = db.session()
        with db.write_transaction(session):
            session.add(
                RefreshToken(
                    token_hash=digest(token),
                    client_id=client.get_client_id(),
                    username=user.username,
                    scope=scope,
                    patient=user.patient,
                    encounter=user.encounter,
                    expires_at=db.now() + REFRESH_LIFETIME[refresh],
                    revoked=False,
                )
            )
        body["refresh_token"] = token


def id_token(client_id: str, user: Grantee) -> str:
    """OpenID Connect id token: who signed in, as a FHIR resource URL (``fhirUser``)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": tokens.issuer(),
        "sub": user.username,
        "aud": client_id,
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
        "fhirUser": f"{base_url()}/{user.fhir_user}",
    }
    if user.nonce:
        claims["nonce"] = user.nonce
    if user.name:
        claims["name"] = user.name
    key = signing_key()
    return jwt.encode(
        {"alg": SIGNING_ALG, "typ": "JWT", "kid": key.kid}, claims, key, algorithms=[SIGNING_ALG]
    )


# -- EHR launch ----------------------------------------------------------------------------------------------
def create_launch(created_by: str, patient: str | None, encounter: str | None = None) -> str:
    launch_id = secrets.token_urlsafe(18)
    session = db.session()
    with db.write_transaction(session):
        session.execute(delete(LaunchContext).where(LaunchContext.expires_at <= db.now()))
        session.add(
            LaunchContext(
                launch_id=launch_id,
                patient=patient,
                encounter=encounter,
                created_by=created_by,
                expires_at=db.now() + LAUNCH_LIFETIME,
            )
        )
    return launch_id


def _launch_context(launch: str) -> LaunchContext | None:
    row = db.session().get(LaunchContext, launch)
    return row if row is not None and row.expires_at > db.now() else None


# -- the authorization endpoint ---------------------------------------------------------------------------
def _serializer() -> URLSafeTimedSerializer:
    """Tickets are signed with a key derived from the token-signing key: every worker and host agrees, and
    there is no separate secret to provision."""
    material = signing_key().as_bytes(private=True)
    secret = hmac.new(material, b"fhir-api app-launch ticket", hashlib.sha256).digest()
    return URLSafeTimedSerializer(secret, salt="authorize")


def _request_binding() -> str:
    """What the ticket is bound to: the authorization request's own parameters."""
    keys = ("client_id", "redirect_uri", "scope", "state", "code_challenge", "aud", "launch", "nonce")
    return digest(urlencode([(k, request.args.get(k, "")) for k in keys]))


def _page(title: str, body: str, status: int = 200) -> Response:
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;"
        "margin:3rem auto;padding:0 1rem}label{display:block;margin:.8rem 0 .2rem}"
        "input,select{width:100%;padding:.4rem}button{margin:1rem .5rem 0 0;padding:.5rem 1rem}"
        ".error{color:#a00}ul{padding-left:1.2rem}"
        f"</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = PAGE_CSP
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _form(fields: str, buttons: str) -> str:
    action = escape(f"{request.path}?{request.query_string.decode()}")
    return f'<form method="post" action="{action}">{fields}{buttons}</form>'


def _login_page(client_name: str, error: str | None = None) -> Response:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    fields = (
        f"<p>Sign in to let <strong>{escape(client_name)}</strong> use your FHIR data.</p>{message}"
        '<input type="hidden" name="step" value="login">'
        '<label for="username">Username</label><input id="username" name="username" autocomplete="username">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password">'
    )
    return _page("Sign in", _form(fields, '<button type="submit">Sign in</button>'), 401 if error else 200)


def _consent_page(client_name: str, user: AuthUser, scope: str, need_patient: bool, error: str | None = None):
    ticket = _serializer().dumps({"u": user.username, "r": _request_binding()})
    scopes = "".join(f"<li><code>{escape(s)}</code></li>" for s in scope.split())
    picker = ""
    if need_patient:
        options = "".join(
            f'<option value="{escape(pid)}">{escape(label)}</option>'
            for pid, label in _patients_for(user, scope)
        )
        picker = (
            '<label for="patient">Patient</label>'
            f'<select id="patient" name="patient" required>{options}</select>'
            if options
            else '<p class="error">No patient you may see was found.</p>'
        )
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    fields = (
        f"{message}<p><strong>{escape(client_name)}</strong> asks, for "
        f"{escape(user.name or user.username)}:</p><ul>{scopes}</ul>{picker}"
        '<input type="hidden" name="step" value="consent">'
        f'<input type="hidden" name="ticket" value="{ticket}">'
    )
    buttons = (
        '<button type="submit" name="decision" value="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button>'
    )
    return _page("Allow access?", _form(fields, buttons))


def _patients_for(user: AuthUser, scope: str) -> list[tuple[str, str]]:
    """The patient picker: a search run as the signed-in clinician (so it shows only what they may see, and
    is audited as their search)."""
    if not any(s.startswith(("user/Patient.", "user/*.")) for s in scope.split()):
        return []
    token = _picker_token(user)
    query = request.form.get("q") or request.args.get("q") or ""
    args = {"_count": "50"}
    if query:
        args["name"] = query
    resp = _inner_get(f"/fhir/R4/Patient?{urlencode(args)}", token)
    if resp.status_code != 200:
        return []
    out = []
    for entry in resp.get_json().get("entry", []):
        res = entry.get("resource", {})
        name = (res.get("name") or [{}])[0]
        label = " ".join([*name.get("given", []), name.get("family", "")]).strip() or res.get("id", "")
        out.append((res["id"], f"{label} ({res.get('birthDate', '?')})"))
    return out


def _may_see_patient(user: AuthUser, patient_id: str) -> bool:
    """A picked patient must be one the clinician may read (the form could name any id)."""
    return _inner_get(f"/fhir/R4/Patient/{patient_id}", _picker_token(user)).status_code == 200


def _inner_get(path: str, token: str) -> Any:
    """A FHIR request made on the user's behalf, in an app context of its own: its ``g`` (principal, audit
    record, database session) must not be the authorization request's."""
    with current_app.app_context():
        resp = current_app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})
        resp.get_data()
        return resp


def _picker_token(user: AuthUser) -> str:
    token, _ = tokens.issue(
        client_id=PICKER_CLIENT,
        role="clinician",
        scope="user/Patient.rs",
        subject=user.username,
        fhir_user=user.fhir_user,
    )
    return token


def authorize() -> Response:
    """GET shows the login page; POSTs carry the login, then the consent (with the picked patient)."""
    server = current_app.extensions["fhir_auth_server"]
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        if getattr(error, "redirect_uri", None):
            return server.handle_error_response(request, error)
        return _page(
            "Cannot authorize", f'<p class="error">{escape(error.description or error.error)}</p>', 400
        )
    client = grant.client.model
    aud = request.args.get("aud", "")
    if aud.rstrip("/") != base_url():
        return _redirect_error(grant, "invalid_request", f"aud must be this server's FHIR base, {base_url()}")
    if not request.args.get("code_challenge"):
        return _redirect_error(grant, "invalid_request", "PKCE is required: code_challenge with S256")
    launch = request.args.get("launch")
    context = _launch_context(launch) if launch else None
    if launch and (context is None or "launch" not in grant.request.scope.split()):
        return _redirect_error(grant, "invalid_request", "unknown or expired launch, or no 'launch' scope")
    note_actor(client_id=client.client_id, role=client.role)
    if request.method == "GET":
        return _login_page(client.name)
    session = db.session()
    if request.form.get("step") == "login":
        username = request.form.get("username", "")
        note_detail(user=username[:64], step="login")
        user = users.authenticate(session, username, request.form.get("password", ""))
        if user is None or user.role != client.role:
            return _login_page(client.name, "Unknown user or wrong password.")
        return _consent_page(client.name, user, grant.request.scope, _needs_picker(grant, user, context))
    try:
        ticket = _serializer().loads(request.form.get("ticket", ""), max_age=TICKET_LIFETIME)
    except BadSignature:
        return _login_page(client.name, "The page expired; sign in again.")
    user = users.get_user(session, ticket.get("u", "")) if ticket.get("r") == _request_binding() else None
    if user is None:
        return _login_page(client.name, "The page expired; sign in again.")
    note_detail(user=user.username, step="consent", decision=request.form.get("decision", "")[:8])
    if request.form.get("decision") != "allow":
        return server.create_authorization_response(grant_user=None, grant=grant)
    patient = users.patient_of(user)
    encounter = None
    if context is not None:
        patient, encounter = context.patient or patient, context.encounter
    elif _needs_picker(grant, user, context):
        patient = request.form.get("patient", "")
        if not patient or not _may_see_patient(user, patient):
            return _consent_page(
                client.name, user, grant.request.scope, True, "Choose a patient from the list."
            )
    grantee = Grantee(
        user.username,
        user.role,
        user.fhir_user,
        user.name,
        patient=patient,
        encounter=encounter,
        nonce=request.args.get("nonce"),
    )
    return server.create_authorization_response(grant_user=grantee, grant=grant)


def _needs_picker(grant: Any, user: AuthUser, context: LaunchContext | None) -> bool:
    return user.role == "clinician" and context is None and "launch/patient" in grant.request.scope.split()


def _redirect_error(grant: Any, error: str, description: str) -> Response:
    redirect_uri = grant.request.payload.redirect_uri or grant.client.get_default_redirect_uri()
    params = {"error": error, "error_description": description}
    if request.args.get("state"):
        params["state"] = request.args["state"]
    resp = Response(status=302)
    resp.headers["Location"] = f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(params)}"
    return resp


def purge_expired() -> None:
    """Expired codes and refresh tokens are useless; drop them (called by the CLI and tests)."""
    session = db.session()
    with db.write_transaction(session):
        session.execute(delete(AuthCode).where(AuthCode.expires_at <= db.now()))
        session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= db.now()))
