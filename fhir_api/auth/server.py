"""The built-in authorization server: token (authlib's grant framework), JWKS, introspection, revocation.

Backend Services (client_credentials with private_key_jwt) is served here; errors follow RFC 6749
section 5.2 (``invalid_client``, ``invalid_scope``, ``unsupported_grant_type``...), never OperationOutcome,
because OAuth clients parse those.
"""

from __future__ import annotations

import json
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    UnsupportedGrantTypeError,
)
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from audit.recorder import note_actor, note_detail
from fhir_api import db
from fhir_api.auth import app_launch, external, networks, tokens
from fhir_api.auth.assertions import ASSERTION_TYPE, unverified_parts, verify_assertion
from fhir_api.auth.clients import APP_ROLES, BACKEND_ROLES, get_client
from fhir_api.auth.jwks_fetch import JwksFetchError, fetch_jwks
from fhir_api.auth.keys import public_jwks
from fhir_api.auth.models import AuthClient
from fhir_api.auth.scopes import InvalidScope, grant
from fhir_api.errors import NotFound
from fhir_api.http import base_url

bp = Blueprint("auth", __name__, url_prefix="/auth")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Client(ClientMixin):
    """authlib's view of a registered client."""

    def __init__(self, model: AuthClient) -> None:
        self.model = model

    def get_client_id(self) -> str:
        return self.model.client_id

    def redirect_uris(self) -> list[str]:
        return json.loads(self.model.redirect_uris) if self.model.redirect_uris else []

    def get_default_redirect_uri(self) -> str | None:
        uris = self.redirect_uris()
        return uris[0] if uris else None

    def get_allowed_scope(self, scope: str) -> str:
        return grant(scope or "", self.model.scope, self.model.role)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris()

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no shared secrets: keys (private_key_jwt) or PKCE for public apps

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.model.public:
            return method == "none"
        return method == "private_key_jwt"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.model.role in APP_ROLES

    def check_grant_type(self, grant_type: str) -> bool:
        if self.model.role in BACKEND_ROLES:
            return grant_type == "client_credentials"
        return grant_type in ("authorization_code", "refresh_token")


def _query_client(client_id: str) -> Client | None:
    model = get_client(db.session(), client_id) if client_id else None
    return Client(model) if model is not None and not model.disabled else None


def token_url() -> str:
    return base_url(root=True) + "/auth/token"


def client_keys(model: AuthClient) -> KeySet:
    """The client's public keys: registered inline, or fetched from its JWKS URL."""
    try:
        if model.jwks:
            return KeySet.import_key_set(json.loads(model.jwks))
        if model.jwks_url:
            return KeySet.import_key_set(fetch_jwks(model.jwks_url))  # type: ignore[arg-type]
    except JwksFetchError as exc:
        raise InvalidClientError(description=f"the client's keys are unavailable: {exc}") from None
    except (JoseError, ValueError, TypeError, KeyError):
        raise InvalidClientError(description="the client's registered keys are not a valid JWK Set") from None
    raise InvalidClientError(description="the client has no registered keys")


def _authenticate_private_key_jwt(query_client: Any, req: Any) -> Client | None:
    form = req.form
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        if form.get("client_assertion_type") is not None:
            raise InvalidClientError(description=f"client_assertion_type must be {ASSERTION_TYPE}")
        return None
    assertion = form.get("client_assertion")
    if not assertion:
        raise InvalidClientError(description="client_assertion is missing")
    _, claims = unverified_parts(assertion)
    client_id = claims.get("iss")
    if isinstance(client_id, str):
        note_actor(client_id=client_id[:128])  # as claimed: a refusal is recorded under it
    if form.get("client_id") and form.get("client_id") != client_id:
        raise InvalidClientError(description="client_id differs from the client_assertion issuer")
    client = query_client(client_id) if isinstance(client_id, str) else None
    if client is None:
        raise InvalidClientError(description="unknown or disabled client")
    verify_assertion(db.session(), client.model, assertion, token_url(), client_keys(client.model))
    if not networks.allows((client.model.allowed_networks or "").split(), request.remote_addr):
        raise InvalidClientError(description="this client may not request tokens from this network address")
    return client


class BackendServicesGrant(grants.ClientCredentialsGrant):
    """SMART Backend Services: client_credentials authenticated by a signed JWT, scopes required."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]  # noqa: RUF012 (authlib's class attribute)

    def validate_requested_scope(self) -> None:
        requested = self.request.payload.scope
        if not requested:
            raise InvalidScopeError(description="scope is required (e.g. system/Observation.rs)")
        try:
            granted = self.client.get_allowed_scope(requested)
        except InvalidScope as exc:
            raise InvalidScopeError(description=str(exc)) from None
        if not granted.strip():
            raise InvalidScopeError(description="none of the requested scopes can be granted to this client")
        self.granted_scope = granted

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """The token for the granted scope (never for more than was asked, registered and allowed)."""
        token = self.generate_token(scope=self.granted_scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _generate_token(
    grant_type: str,
    client: Client,
    user: Any = None,
    scope: str | None = None,
    expires_in: int | None = None,
    include_refresh_token: bool = False,
) -> dict[str, Any]:
    model = client.model
    organization = model.organization.partition("/")[2] if model.organization else None
    person = user if isinstance(user, app_launch.Grantee) else None  # App Launch: who signed in
    access, claims = tokens.issue(
        client_id=model.client_id,
        role=model.role,
        scope=scope or "",
        organization=organization,
        networks=tuple((model.allowed_networks or "").split()),
        subject=person.username if person else None,
        patient=person.patient if person else None,
        fhir_user=person.fhir_user if person else None,
    )
    note_actor(client_id=model.client_id, role=model.role, jti=claims["jti"])
    note_detail(scope=claims["scope"], grant=grant_type, **({"user": person.username} if person else {}))
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "bearer",
        "expires_in": claims["exp"] - claims["iat"],
        "scope": claims["scope"],
    }
    if person is not None:
        app_launch.extend_token(body, client, person, claims["scope"], claims)
    return body


def init_app(app: Flask) -> None:
    server = AuthorizationServer(app, query_client=_query_client, save_token=lambda token, req: None)
    server.register_client_auth_method("private_key_jwt", _authenticate_private_key_jwt)
    server.register_grant(BackendServicesGrant)
    server.register_grant(app_launch.AuthorizationCodeGrant, [app_launch.S256Only(required=True)])
    server.register_grant(app_launch.RefreshTokenGrant)
    server.register_token_generator("default", _generate_token)
    app.extensions["fhir_auth_server"] = server
    app.register_blueprint(bp)


@bp.route("/token", methods=["POST"])
def token() -> Response:
    """OAuth 2.0 token endpoint (form-encoded, per RFC 6749 section 4.4 and SMART Backend Services)."""
    server: AuthorizationServer = current_app.extensions["fhir_auth_server"]
    if external.enabled():
        error = UnsupportedGrantTypeError(request.form.get("grant_type", ""))
        error.description = "this server is a resource server: get tokens from " + str(
            current_app.config.get("AUTH_EXTERNAL_ISSUER")
        )
        return _oauth_error(error)
    if request.mimetype != "application/x-www-form-urlencoded":
        return _oauth_error(
            InvalidRequestError(description="the body must be application/x-www-form-urlencoded")
        )
    resp = server.create_token_response()
    resp.headers.update(NO_STORE)
    return resp


def _oauth_error(error: Any) -> Response:
    status, body, headers = error.status_code, dict(error.get_body()), dict(error.get_headers())
    resp = jsonify(body)
    resp.status_code = status
    resp.headers.update(headers)
    resp.headers.update(NO_STORE)
    return resp


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """SMART App Launch authorization endpoint: sign-in, consent and patient picker pages, then a redirect
    with the code (or an error) to the app's registered redirect URI."""
    if external.enabled():
        raise NotFound("Resource-server mode: apps sign users in at the identity provider")
    return app_launch.authorize()


@bp.route("/launch", methods=["POST"])
def launch() -> Response:
    """EHR launch: a clinical system (the EHR) registers the context it launches an app in and gets the
    opaque ``launch`` value to pass to the app."""
    caller = _caller()
    if caller.role != "clinical-system":
        return _oauth_error(InvalidClientError(description="only an EHR (clinical system) launches"))
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        data = request.form
    patient = str(data.get("patient") or "") or None
    encounter = str(data.get("encounter") or "") or None
    if patient is None:
        return _oauth_error(InvalidRequestError(description="patient is required"))
    launch_id = app_launch.create_launch(caller.client_id, patient, encounter)
    note_detail(patient=patient)
    resp = jsonify({"launch": launch_id, "expires_in": int(app_launch.LAUNCH_LIFETIME.total_seconds())})
    resp.headers.update(NO_STORE)
    return resp


@bp.route("/jwks", methods=["GET"])
def jwks() -> Response:
    """The public keys that verify this server's access tokens."""
    resp = jsonify(public_jwks())
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


def _caller() -> Any:
    """Introspection and revocation are for holders of an active token (a resource server, or the client
    itself); RFC 7662 section 2.1 lets the endpoint accept a bearer token as its authorization."""
    from fhir_api.auth.guard import authenticate

    return authenticate()


def _may_see(caller: Any, claims: tokens.Claims) -> bool:
    return caller.role == "admin" or caller.client_id == claims.client_id


@bp.route("/introspect", methods=["POST"])
def introspect() -> Response:
    """RFC 7662, with the SMART fields; ``active: false`` for anything the caller may not see."""
    caller = _caller()
    if "token" not in request.form:
        return _oauth_error(InvalidRequestError(description="token is required (RFC 7662 section 2.1)"))
    token = request.form["token"]
    inactive = jsonify({"active": False})
    try:
        claims = tokens.verify(token)
    except tokens.InvalidToken:
        return inactive
    if not _may_see(caller, claims) or tokens.is_revoked(db.session(), claims.jti):
        return inactive
    body: dict[str, Any] = {
        "active": True,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "exp": claims.exp,
        "sub": claims.sub,
        "iss": tokens.issuer(),
        "aud": base_url(),
        "jti": claims.jti,
        "token_type": "Bearer",
        "role": claims.role,
    }
    for name, value in (("patient", claims.patient), ("fhirUser", claims.fhir_user)):
        if value:
            body[name] = value
    return jsonify(body)


@bp.route("/revoke", methods=["POST"])
def revoke() -> Response:
    """RFC 7009: 200 whether or not the token was valid (section 2.2), effective on every worker at once."""
    caller = _caller()
    if "token" not in request.form:
        return _oauth_error(InvalidRequestError(description="token is required (RFC 7009 section 2.1)"))
    token = request.form["token"]
    try:
        claims = tokens.verify(token)
    except tokens.InvalidToken:
        return Response(status=200)
    if _may_see(caller, claims):
        tokens.revoke(db.session(), claims.jti, claims.exp)
    return Response(status=200)
