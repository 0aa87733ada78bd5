"""Append-only, tamper-evident audit log: recording, hash chain, verification, auditor search and export.

``record`` is the one way an event enters the log. Requests reach it through ``audit.recorder`` (every FHIR
interaction, token request and refusal); the command line calls it for operations on keys and clients.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable

from flask import Flask, current_app
from sqlalchemy.orm import Session

from audit.events import Actor, Event

__all__ = ["Actor", "Event", "init_app", "operator", "record", "record_operation"]


def record(session: Session, event: Event, *, batch: list | None = None) -> None:
    """Append ``event``: into ``batch`` (a write's own statements, committed with the change), or in a
    transaction of its own, committed before this returns."""
    from audit import signing, store

    if not current_app.config.get("AUDIT", True):
        return
    if batch is not None:
        batch += store.event_batch([event], signing.mac_key())
    else:
        store.commit_events(session, [event], signing.mac_key())


def operator() -> Actor:
    """The person at the command line, as the operating system knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(operator=f"{user}@{socket.gethostname()}")


def record_operation(
    session: Session,
    subtype: tuple[str, str],
    *,
    detail: dict[str, str],
    entities: Iterable[tuple[str, str | None]] = (),
    outcome: str = "0",
    event_type: dict[str, str] | None = None,
    in_transaction: bool = False,
) -> None:
    """A security-relevant operation from the command line (key rotation, client registration);
    ``in_transaction``: within the caller's open write transaction, committed with its change."""
    from audit import events as ev
    from fhir_api import db

    code, display = subtype
    event = Event(
        type=event_type or ev.SECURITY_ALERT,
        subtype=ev.dcm(code, display),
        action="E",
        recorded=db.now(),
        actor=operator(),
        server=current_app.config.get("PUBLIC_URL") or socket.gethostname(),
        outcome=outcome,
        entities=list(entities),
        detail=detail,
    )
    if in_transaction:
        batch: list = []
        record(session, event, batch=batch)
        db.execute_batch(session, batch)
    else:
        record(session, event)


def init_app(app: Flask) -> None:
    from audit import recorder
    from audit.search import capability
    from resources.capability import TYPE_OVERRIDES

    recorder.init_app(app)
    TYPE_OVERRIDES["AuditEvent"] = capability
