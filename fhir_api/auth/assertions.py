"""``private_key_jwt`` client authentication (RFC 7523 section 2.2, SMART Backend Services).

Every check SMART asks for, plus the ones attackers try: ``alg: none`` and HMAC algorithms (an HS256
token "signed" with the client's public key) are refused before any key is touched, ``jku`` must be the
registered JWKS URL, ``exp`` at most five minutes ahead, and a ``jti`` is accepted once per client across
all workers (the replay cache is a database table).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidClientError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_api.auth.models import AuthClient, UsedAssertion
from fhir_api.db import write_transaction

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS384", "PS256"]
MAX_AHEAD = 300  # seconds an assertion may still be valid for
SKEW = 30


def _refuse(why: str) -> InvalidClientError:
    return InvalidClientError(description=why)


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to find the client and its key."""
    try:
        obj = extract_compact(assertion.encode("ascii"))
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError):
        raise _refuse("client_assertion is not a compact JWS") from None
    if not isinstance(claims, dict):
        raise _refuse("client_assertion claims are not a JSON object")
    return dict(obj.protected), claims


def verify_assertion(
    session: Session,
    client: AuthClient,
    assertion: str,
    token_url: str,
    keys: KeySet,
) -> None:
    """Raise ``invalid_client`` unless the assertion is the client's, fresh, for us, and first seen."""
    header, _ = unverified_parts(assertion)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _refuse(f"client_assertion alg {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
    jku = header.get("jku")
    if jku is not None and jku != client.jwks_url:
        raise _refuse("client_assertion jku is not the JWKS URL registered for this client")
    try:
        decoded = jwt.decode(assertion, keys, algorithms=ALGORITHMS)
    except JoseError:
        raise _refuse(
            "client_assertion signature does not verify with the client's registered keys"
        ) from None
    claims = decoded.claims
    cid = client.client_id
    if claims.get("iss") != cid or claims.get("sub") != cid:
        raise _refuse("client_assertion iss and sub must both be the client_id")
    aud = claims.get("aud")
    if token_url not in (aud if isinstance(aud, list) else [aud]):
        raise _refuse(f"client_assertion aud must be the token endpoint {token_url}")
    now = int(time.time())
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)):
        raise _refuse("client_assertion has no exp")
    if exp <= now - SKEW:
        raise _refuse("client_assertion has expired")
    if exp > now + MAX_AHEAD + SKEW:
        raise _refuse("client_assertion exp is more than five minutes ahead")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and nbf > now + SKEW:
        raise _refuse("client_assertion is not valid yet (nbf)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _refuse("client_assertion has no jti")
    _remember(session, cid, jti, int(exp))


def _remember(session: Session, client_id: str, jti: str, exp: int) -> None:
    """Insert-or-fail in its own committed transaction: two workers racing on one jti cannot both win."""
    row = {"key": f"{client_id} {jti}"[:400], "expires_at": datetime.fromtimestamp(exp + SKEW, UTC)}
    try:
        with write_transaction(session):
            session.execute(insert(UsedAssertion), [row])
    except IntegrityError:
        raise _refuse("client_assertion jti was already used (replay)") from None
