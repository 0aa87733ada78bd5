"""The client registry: what `fhir-api clients ...` manages and the token endpoint consults."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_api.auth import networks
from fhir_api.auth.models import AuthClient
from fhir_api.auth.scopes import ROLE_CEILINGS, InvalidScope, parse_scopes
from fhir_api.db import now, write_transaction

BACKEND_ROLES = frozenset({"clinical-system", "insurer", "auditor", "admin"})  # client_credentials
APP_ROLES = frozenset({"clinician", "patient"})  # authorization code (app launch)


class ClientError(ValueError):
    """A registration that cannot be accepted, with the reason."""


@dataclass(frozen=True)
class Registration:
    name: str
    role: str
    scope: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    organization: str | None = None
    redirect_uris: tuple[str, ...] = ()
    public: bool = False
    allowed_networks: tuple[str, ...] = ()  # CIDR blocks the client may connect from; empty: anywhere


def _check(reg: Registration) -> None:
    if reg.role not in ROLE_CEILINGS:
        raise ClientError(f"unknown role {reg.role!r}; one of {', '.join(sorted(ROLE_CEILINGS))}")
    try:
        parse_scopes(reg.scope)
    except InvalidScope as exc:
        raise ClientError(str(exc)) from None
    if reg.role in BACKEND_ROLES:
        if reg.public:
            raise ClientError(f"a {reg.role} client authenticates with its keys; it cannot be public")
        if not (reg.jwks or reg.jwks_url):
            raise ClientError(f"a {reg.role} client needs --jwks-file or --jwks-url (private_key_jwt)")
    elif not reg.redirect_uris:
        raise ClientError(f"a {reg.role} client (app launch) needs at least one --redirect-uri")
    if reg.role == "insurer" and not (reg.organization or "").startswith("Organization/"):
        raise ClientError("an insurer client needs --organization Organization/<id> (its payor identity)")
    if reg.jwks is not None:
        try:
            keys = KeySet.import_key_set(reg.jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ClientError(f"the JWKS is not a valid JWK Set: {exc}") from None
        if any(k.is_private for k in keys.keys):
            raise ClientError("the JWKS holds a private key: register only the public keys")
    if reg.jwks_url and not reg.jwks_url.startswith(("https://", "http://")):
        raise ClientError("--jwks-url must be an http(s) URL")
    try:
        networks.parse(reg.allowed_networks)
    except networks.NetworkError as exc:
        raise ClientError(f"--allow-ip: {exc}") from None


AuditHook = Callable[[Session, "AuthClient"], None]


def new_client_id() -> str:
    """A random id that never starts with '-' or '_': on a command line (`clients disable ID`) a leading
    '-' would be read as an option."""
    while not (client_id := secrets.token_urlsafe(18))[0].isalnum():
        pass
    return client_id


def add_client(session: Session, reg: Registration, audit: AuditHook | None = None) -> AuthClient:
    """Register a client; ``audit`` records it in the same transaction (both commit or neither)."""
    _check(reg)
    client = AuthClient(
        client_id=new_client_id(),
        name=reg.name,
        role=reg.role,
        scope=reg.scope,
        jwks=json.dumps(reg.jwks) if reg.jwks is not None else None,
        jwks_url=reg.jwks_url,
        organization=reg.organization,
        redirect_uris=json.dumps(list(reg.redirect_uris)) if reg.redirect_uris else None,
        public=reg.public,
        allowed_networks=" ".join(networks.parse(reg.allowed_networks)) or None,
        disabled=False,
        created_at=now(),
    )
    with write_transaction(session):
        session.add(client)
        session.flush()
        if audit is not None:
            audit(session, client)
    return client


def get_client(session: Session, client_id: str) -> AuthClient | None:
    return session.get(AuthClient, client_id)


def list_clients(session: Session) -> list[AuthClient]:
    return list(
        session.execute(select(AuthClient).order_by(AuthClient.created_at, AuthClient.name)).scalars()
    )


def set_disabled(
    session: Session, client_id: str, disabled: bool = True, audit: AuditHook | None = None
) -> AuthClient:
    with write_transaction(session):
        client = session.get(AuthClient, client_id, with_for_update=True)
        if client is None:
            raise ClientError(f"no client {client_id!r}")
        client.disabled = disabled
        session.flush()
        if audit is not None:
            audit(session, client)
    return client
