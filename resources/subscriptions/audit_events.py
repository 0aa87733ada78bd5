"""Audit events of the deliverer: every attempt to send a notification (what went where, about which
patients, with what answer) and every status the server set, written with the change they record."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy.orm import Session

import audit
from audit import events as ev
from audit.store import patients_of
from fhir_api import db

SYSTEM = "urn:fhir-api:audit-subtype"
NOTIFY = {"system": SYSTEM, "code": "subscription-notification", "display": "Subscription notification"}
STATUS = {"system": SYSTEM, "code": "subscription-status", "display": "Subscription status change"}


def _server() -> str:
    return current_app.config.get("PUBLIC_URL") or socket.gethostname()


def attempt(session: Session, sub: Any, delivery: Any, outcome: Any, endpoint: str) -> None:
    """One delivery attempt: the owner's client as recipient, the endpoint's host as its address."""
    code = outcome.code
    event = audit.Event(
        type=ev.EXPORT,
        subtype=NOTIFY,
        action="E",
        recorded=db.now(),
        actor=audit.Actor(client_id=sub.owner, address=urlsplit(endpoint).hostname),
        server=_server(),
        outcome="0" if outcome.delivered else ("4" if code is not None and code < 500 else "8"),
        outcome_desc=outcome.error,
        entities=[
            (f"{delivery.res_type}/{delivery.res_id}", str(delivery.version)),
            (f"Subscription/{sub.sub_id}", None),
        ],
        patients=sorted(patients_of(session, [(delivery.res_type, delivery.res_id)])),
        detail={
            "event-number": str(delivery.event_number),
            "attempt": str(delivery.attempts),
            "status": str(code) if code is not None else "none",
            "content": sub.content,
        },
    )
    audit.record(session, event, batch=(batch := []))
    db.execute_batch(session, batch)


def status_changed(session: Session, sub_id: str, version: int, status: str, error: str | None) -> None:
    event = audit.Event(
        type=ev.REST,
        subtype=STATUS,
        action="U",
        recorded=db.now(),
        actor=audit.Actor(operator=f"subscription-deliverer@{socket.gethostname()}"),
        server=_server(),
        entities=[(f"Subscription/{sub_id}", str(version))],
        detail={"status": status, **({"reason": error} if error else {})},
    )
    audit.record(session, event, batch=(batch := []))
    db.execute_batch(session, batch)
