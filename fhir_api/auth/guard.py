"""Every FHIR data request: a valid bearer token, then its scopes checked against the interaction.

Runs before any FHIR view (fail closed: a data endpoint missing from ``ACTIONS`` is refused), puts the
``Principal`` in ``g.principal`` for the audit log and the ``Access`` in ``g.access`` for the resources
layer, which applies it inside every query.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flask import Flask, g, request

from fhir_api import db
from fhir_api.auth import networks, tokens
from fhir_api.auth.scopes import ROLE_CEILINGS, InvalidScope, parse_scopes
from fhir_api.errors import Forbidden, Unauthorized
from resources.access import Access, Rule

PUBLIC_ENDPOINTS = frozenset({"fhir.capabilities", "fhir.smart_configuration"})
PER_ENTRY = frozenset({"fhir.bundle"})  # batch and transaction: authorised entry by entry

# FHIR interaction -> SMART v2 action letter (search includes history-type/system; read includes vread and
# history-instance, as SMART App Launch 2 defines them).
ACTIONS = {
    "fhir.create": "c",
    "fhir.read": "r",
    "fhir.vread": "r",
    "fhir.history_instance": "r",
    "fhir.update": "u",
    "fhir.patch": "u",
    "fhir.conditional_update": "u",
    "fhir.delete": "d",
    "fhir.conditional_delete": "d",
    "fhir.search_type": "s",
    "fhir.search_type_post": "s",
    "fhir.search_compartment": "s",
    "fhir.search_system": "s",
    "fhir.search_system_post": "s",
    "fhir.history_type": "s",
    "fhir.history_system": "s",
    "fhir.validate_type": "c",
    "fhir.patient_everything": "r",
    "fhir.patients_everything": "s",
    "fhir.validate_instance": "u",
}


@dataclass(frozen=True)
class Principal:
    """Who is asking: the client, its role, the token's grant and context (for access and the audit log)."""

    client_id: str
    role: str
    scope: str
    jti: str
    subject: str
    patient: str | None = None
    fhir_user: str | None = None
    organization: str | None = None


def _challenge(error: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="fhir"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def authenticate() -> Principal:
    """The bearer token's principal, or 401. Verified once per request (the rate limiter asks first)."""
    known = g.get("_authenticated")
    if isinstance(known, Principal):
        return known
    if isinstance(known, Unauthorized):
        raise known
    try:
        g._authenticated = _verify_bearer()
    except Unauthorized as exc:
        g._authenticated = exc
        raise
    return g._authenticated


def has_bearer() -> bool:
    return request.headers.get("Authorization", "")[:7].lower() == "bearer "


def _verify_bearer() -> Principal:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "This endpoint needs an access token: Authorization: Bearer <token> (see "
            "/fhir/R4/.well-known/smart-configuration)",
            headers=_challenge(),
        )
    try:
        claims = tokens.verify(token)
    except tokens.InvalidToken as exc:
        raise Unauthorized(
            f"The access token was refused: {exc}", headers=_challenge("invalid_token")
        ) from None
    if tokens.is_revoked(db.session(), claims.jti):
        raise Unauthorized("The access token was revoked", headers=_challenge("invalid_token"))
    if claims.networks and not networks.allows(claims.networks, request.remote_addr):
        raise Unauthorized(
            "The access token's client may not be served at this network address",
            headers=_challenge("invalid_token"),
        )
    return Principal(
        client_id=claims.client_id,
        role=claims.role,
        scope=claims.scope,
        jti=claims.jti,
        subject=claims.sub,
        patient=claims.patient,
        fhir_user=claims.fhir_user,
        organization=claims.organization,
    )


@lru_cache(maxsize=4096)
def access_for(principal: Principal) -> Access:
    """The token's scopes as rules, narrowed by its role and launch context (computed once per token)."""
    ceiling = ROLE_CEILINGS.get(principal.role)
    if ceiling is None:
        return Access()
    try:
        scopes = parse_scopes(principal.scope)
    except InvalidScope:
        return Access()
    scopes = [s for s in scopes if s.context in ceiling.contexts]
    patient_role = principal.role == "patient"
    rules = tuple(
        Rule(
            s.res_type,
            s.actions & ceiling.actions_for(s.res_type),
            s.query,
            patient_only=patient_role or s.context == "patient",
        )
        for s in scopes
    )
    if not principal.patient:  # patient/ scopes without a patient in context grant nothing (fail closed)
        rules = tuple(r for r in rules if not r.patient_only)
        if not rules:
            return Access()
    patient = principal.patient
    payor = None
    if principal.role == "insurer":
        if not principal.organization:
            return Access()
        payor = principal.organization
    return Access(
        rules=rules,
        types=ceiling.type_set(),
        patient=patient or None,
        payor=payor,
        owner=principal.client_id,
    )


# Benchmarks only (FHIR_AUTH_ENFORCE=false, bench/auth.py): the price of token checks is measured against a
# server that grants every request this principal. `serve` warns loudly; nothing else ever sets it.
BENCH_PRINCIPAL = Principal(
    client_id="auth-not-enforced", role="clinical-system", scope="system/*.*", jti="-", subject="-"
)


def _enforced() -> bool:
    from flask import current_app

    return current_app.config.get("AUTH_ENFORCE", True) not in (False, "false", "0")


def init_app(app: Flask) -> None:
    @app.before_request
    def _authorize() -> None:
        if (
            request.blueprint != "fhir"
            or request.endpoint is None
            or request.endpoint in PUBLIC_ENDPOINTS
            or request.method == "OPTIONS"  # a CORS preflight carries no token; Flask answers it
        ):
            return
        principal = authenticate() if _enforced() else BENCH_PRINCIPAL
        g.principal = principal
        g.access = access_for(principal)
        if request.endpoint in PER_ENTRY:
            return  # each entry is checked against the token as the single request would be
        action = ACTIONS.get(request.endpoint)
        if action is None:
            raise Forbidden("This endpoint has no access rule yet, so it is closed")
        res_type = (request.view_args or {}).get("res_type")
        g.access.require(res_type, action)
