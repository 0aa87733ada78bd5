"""Access tokens: signed JWTs (RFC 9068 profile) checked per request, revocable at once on every worker."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_api.auth import external, revocation
from fhir_api.auth.keys import SIGNING_ALG, signing_key
from fhir_api.auth.models import RevokedToken
from fhir_api.db import write_transaction
from fhir_api.http import base_url

TOKEN_TYPE = "at+jwt"
MAX_LIFETIME = 300  # seconds: SMART backend services asks for at most five minutes
CLOCK_SKEW = 30


class InvalidToken(Exception):
    """Why a bearer token was refused (said to the client in the 401's OperationOutcome)."""


@dataclass(frozen=True)
class Claims:
    """What a verified access token says about its bearer."""

    jti: str
    client_id: str
    role: str
    scope: str
    exp: int
    sub: str
    patient: str | None = None
    fhir_user: str | None = None
    organization: str | None = None
    networks: tuple[str, ...] = ()  # the client's network allowlist when issued (claim "net")


def issuer() -> str:
    return base_url(root=True) + "/auth"


def issue(
    *,
    client_id: str,
    role: str,
    scope: str,
    subject: str | None = None,
    patient: str | None = None,
    fhir_user: str | None = None,
    organization: str | None = None,
    networks: tuple[str, ...] = (),
) -> tuple[str, dict[str, Any]]:
    """A signed access token for the FHIR base of this server, and its claims."""
    now = int(time.time())
    lifetime = min(int(current_app.config.get("AUTH_TOKEN_LIFETIME", MAX_LIFETIME)), MAX_LIFETIME)
    claims: dict[str, Any] = {
        "iss": issuer(),
        "sub": subject or client_id,
        "aud": base_url(),
        "client_id": client_id,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "scope": scope,
        "role": role,
    }
    for name, value in (("patient", patient), ("fhirUser", fhir_user), ("organization", organization)):
        if value:
            claims[name] = value
    if networks:
        claims["net"] = list(networks)
    key = signing_key()
    header = {"alg": SIGNING_ALG, "typ": TOKEN_TYPE, "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[SIGNING_ALG]), claims


# Verified tokens by their exact text: a token is re-presented on every request of its short life, and the
# signature check is the costly part. Revocation is still checked on every request (fhir_api.auth.revocation).
_VERIFIED: OrderedDict[tuple[str, str], Claims] = OrderedDict()
_VERIFIED_MAX = 4096


def verify(token: str) -> Claims:
    """Signature, type, issuer, audience and lifetime of an access token issued here."""
    key = (token, base_url())  # issuer and audience depend on the base this request came through
    cached = _VERIFIED.get(key)
    now = int(time.time())
    if cached is not None:
        if cached.exp <= now:
            _VERIFIED.pop(key, None)
            raise InvalidToken("the access token has expired")
        return cached
    if external.enabled():  # resource-server mode: the hospital's identity provider issued it
        try:
            c = external.verify(token)
        except ValueError as exc:
            raise InvalidToken(str(exc)) from None
        return _remember(key, _claims(c, c["exp"]))
    try:
        decoded = jwt.decode(token, signing_key(), algorithms=[SIGNING_ALG])
    except (JoseError, ValueError) as exc:
        raise InvalidToken("the access token is not a valid token of this server") from exc
    if decoded.header.get("typ") != TOKEN_TYPE:
        raise InvalidToken("the bearer token is not an access token")
    c = decoded.claims
    if c.get("iss") != issuer():
        raise InvalidToken("the access token was issued by another server")
    aud = c.get("aud")
    if base_url() not in (aud if isinstance(aud, list) else [aud]):
        raise InvalidToken("the access token is meant for another server")
    exp = c.get("exp")
    if not isinstance(exp, int) or exp <= now:
        raise InvalidToken("the access token has expired")
    if not all(isinstance(c.get(k), str) for k in ("jti", "client_id", "role", "scope", "sub")):
        raise InvalidToken("the access token lacks required claims")
    return _remember(key, _claims(c, exp))


def _claims(c: dict[str, Any], exp: int) -> Claims:
    return Claims(
        jti=c["jti"],
        client_id=c["client_id"],
        role=c["role"],
        scope=c["scope"],
        exp=exp,
        sub=c["sub"],
        patient=c.get("patient"),
        fhir_user=c.get("fhirUser"),
        organization=c.get("organization"),
        networks=tuple(str(n) for n in c.get("net") or ()),
    )


def _remember(key: tuple[str, str], claims: Claims) -> Claims:
    _VERIFIED[key] = claims
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
    return claims


def is_revoked(session: Session, jti: str) -> bool:
    return revocation.is_revoked(session, jti)


def revoke(session: Session, jti: str, exp: int) -> None:
    """Record the revocation (idempotent); every worker refuses the token from its next use."""
    try:
        with write_transaction(session):
            if session.execute(select(RevokedToken.jti).where(RevokedToken.jti == jti)).first() is None:
                session.execute(
                    insert(RevokedToken), [{"jti": jti, "expires_at": datetime.fromtimestamp(exp, UTC)}]
                )
                revocation.announce(session, jti, exp)
    except IntegrityError:
        pass  # revoked concurrently by another request
    revocation.remember(jti, exp)
