"""What a subscription's owner may read now: its client as registered today (a disabled client reads
nothing; a narrowed registration narrows the subscription), with the context it subscribed under.

Looked up at most every ``TTL`` seconds per owner and process (matching 100 subscriptions must not cost 100
client lookups per batch); an access token already issued to the client stays valid for minutes, so this
is well within what the server grants anyway."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from fhir_api.auth.clients import get_client
from fhir_api.auth.guard import Principal, access_for
from fhir_api.auth.scopes import grant
from resources.access import Access

TTL = 2.0
_CACHE: dict[tuple[str, str], tuple[float, Access | None]] = {}
_LOCK = threading.Lock()


def access_of(session: Session, sub: Any) -> Access | None:
    """The owner's access for delivery; None when its client is gone or disabled."""
    key = (sub.owner, sub.principal)
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    access = _lookup(session, sub)
    with _LOCK:
        if len(_CACHE) > 10_000:
            _CACHE.clear()
        _CACHE[key] = (now + TTL, access)
    return access


def forget() -> None:
    with _LOCK:
        _CACHE.clear()


def _lookup(session: Session, sub: Any) -> Access | None:
    saved = json.loads(sub.principal)
    client = get_client(session, sub.owner)
    if client is None or client.disabled:
        return None
    try:
        scope = grant(saved.get("scope") or "", client.scope or "", client.role)
    except ValueError:
        return None
    organization = client.organization.split("/")[-1] if client.organization else saved.get("organization")
    principal = Principal(
        client_id=client.client_id,
        role=client.role,
        scope=scope,
        jti="subscription",
        subject=saved.get("subject") or client.client_id,
        patient=saved.get("patient"),
        fhir_user=saved.get("fhir_user"),
        organization=organization,
    )
    return access_for(principal)
