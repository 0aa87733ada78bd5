"""Recording every audited request: one ``Pending`` per request, written before the answer leaves.

Writes record their event inside the write's own transaction (``write_batch``, called by the repository for
each version it appends), so the change and its record commit together or not at all. Everything else
(reads, searches, history, refusals, failed writes, token requests) is recorded by ``after_request`` in a
transaction of its own; if that fails the client gets a 503 instead of the data (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request
from sqlalchemy.orm import Session

from audit import events as ev
from audit import queries, signing, store
from audit.events import Actor, Event
from fhir_api import db
from fhir_api.config import flag
from fhir_api.db import Batch
from fhir_api.errors import AuditUnavailable, render

log = logging.getLogger("fhir_api.audit")

_SEARCH = ("search-type", "E")
# endpoint -> (event type, subtype code, action)
ENDPOINTS: dict[str, tuple[dict[str, str], str, str]] = {
    "fhir.read": (ev.REST, "read", "R"),
    "fhir.vread": (ev.REST, "vread", "R"),
    "fhir.create": (ev.REST, "create", "C"),
    "fhir.update": (ev.REST, "update", "U"),
    "fhir.conditional_update": (ev.REST, "update", "U"),
    "fhir.patch": (ev.REST, "patch", "U"),
    "fhir.delete": (ev.REST, "delete", "D"),
    "fhir.conditional_delete": (ev.REST, "delete", "D"),
    "fhir.search_type": (ev.REST, *_SEARCH),
    "fhir.search_type_post": (ev.REST, *_SEARCH),
    "fhir.search_compartment": (ev.REST, *_SEARCH),
    "fhir.search_system": (ev.REST, "search-system", "E"),
    "fhir.search_system_post": (ev.REST, "search-system", "E"),
    "fhir.history_instance": (ev.REST, "history-instance", "R"),
    "fhir.history_type": (ev.REST, "history-type", "R"),
    "fhir.history_system": (ev.REST, "history-system", "R"),
    "fhir.bundle": (ev.REST, "batch", "E"),
    "fhir.validate_type": (ev.REST, "operation", "E"),
    "fhir.patient_everything": (ev.REST, "operation", "E"),
    "fhir.patients_everything": (ev.REST, "operation", "E"),
    "fhir.validate_instance": (ev.REST, "operation", "E"),
    "bulk.export_system": (ev.REST, "operation", "E"),
    "bulk.export_patients": (ev.REST, "operation", "E"),
    "bulk.export_group": (ev.REST, "operation", "E"),
    "bulk.status": (ev.REST, "operation", "R"),
    "bulk.cancel": (ev.REST, "operation", "D"),
    "bulk.download": (ev.EXPORT, "export", "R"),
    "subscriptions.events": (ev.REST, "operation", "R"),
    "subscriptions.replay": (ev.REST, "operation", "E"),
    "subscriptions.rotate_secret": (ev.REST, "operation", "E"),
    "audit.read": (ev.REST, "read", "R"),
    "audit.search": (ev.REST, *_SEARCH),
    "audit.search_post": (ev.REST, *_SEARCH),
    "audit.refuse": (ev.REST, "operation", "E"),
    "audit.checkpoints": (ev.REST, "operation", "R"),
    "audit.status": (ev.REST, "operation", "R"),
    "audit.export_log": (ev.EXPORT, "export", "E"),
    "auth.token": (ev.USER_AUTHENTICATION, "110122", "E"),
    "auth.authorize": (ev.USER_AUTHENTICATION, "110122", "E"),
    "auth.launch": (ev.REST, "operation", "C"),
    "auth.revoke": (ev.USER_AUTHENTICATION, "110123", "E"),
    "auth.introspect": (ev.USER_AUTHENTICATION, "introspect", "E"),
}
_SUBTYPE_DISPLAY = {"110122": "Login", "110123": "Logout", "export": "Export", "introspect": "Introspect"}
# Interactions whose query string is part of what was asked (searches, conditional writes, history).
_RECORD_QUERY = {"E", "D", "U", "C"}
_CONDITIONAL = ("fhir.conditional_update", "fhir.conditional_delete")
# Requests that only read. Their record commits without waiting for the database's WAL flush unless
# FHIR_AUDIT_FLUSH_READS (README: audit log): still written and committed before the answer leaves.
_READS_ONLY = frozenset(
    endpoint
    for endpoint, (_, subtype, _) in ENDPOINTS.items()
    if endpoint.startswith("fhir.")
    and (subtype in ("read", "vread") or subtype.startswith(("search-", "history-")))
) | {
    "fhir.patient_everything",
    "audit.read",
    "audit.search",
    "audit.search_post",
    "audit.checkpoints",
    "audit.status",
}


@dataclass
class Pending:
    """What the request has done so far, for its AuditEvent."""

    type: dict[str, str]
    subtype: str
    action: str
    entities: list[tuple[str, str | None]] = field(default_factory=list)
    returned: list[tuple[str, str]] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    detail: dict[str, str] = field(default_factory=dict)
    actor: dict[str, Any] = field(default_factory=dict)  # set by the token endpoint for its client
    written: int = 0  # events that committed with the request's writes
    always: bool = False  # record the request itself even when its writes were recorded (bundles)


def pending() -> Pending | None:
    return g.get("audit") if has_request_context() else None


def enabled() -> bool:
    return bool(current_app.config.get("AUDIT", True))


# -- what views and the repository tell the recorder ---------------------------------------------------------
def note_resource(res_type: str, res_id: str, version: int | str | None = None) -> None:
    p = pending()
    if p is not None:
        p.entities.append((f"{res_type}/{res_id}", str(version) if version is not None else None))
        p.returned.append((res_type, res_id))


def note_returned(refs: list[tuple[str, str]]) -> None:
    """Resources a search or history answered with: the patients among their compartments are named."""
    p = pending()
    if p is not None:
        p.returned.extend(refs)


def note_bundle(kind: str, entries: int) -> None:
    """A batch or transaction: its own event always, besides those of its entries."""
    p = pending()
    if p is not None:
        p.subtype, p.always = kind, True
        p.detail["entries"] = str(entries)


def note_detail(**facts: str) -> None:
    """Facts of an operation worth keeping in its event (an export's format and range)."""
    p = pending()
    if p is not None:
        p.detail.update(facts)


def note_actor(**facts: Any) -> None:
    """The token endpoint's client (claimed, then verified) and the token it issued."""
    p = pending()
    if p is not None:
        p.actor.update({k: v for k, v in facts.items() if v})


@contextmanager
def entry(subtype: str, action: str) -> Iterator[None]:
    """Within a bundle: what one entry does, for the events its writes record."""
    p = pending()
    if p is None:
        yield
        return
    saved = (p.type, p.subtype, p.action)
    p.type, p.subtype, p.action = ev.REST, subtype, action
    try:
        yield
    finally:
        p.type, p.subtype, p.action = saved


def record_entry(
    session: Session,
    *,
    subtype: str,
    action: str,
    entities: list[tuple[str, str | None]],
    returned: list[tuple[str, str]],
    failure: dict[str, Any] | None = None,
    status: int = 200,
    in_transaction: bool,
) -> None:
    """One bundle entry that wrote nothing (a read, a search, a refusal): in the bundle's transaction when
    there is one (all or nothing), else committed now."""
    p = pending()
    if p is None or not enabled():
        return
    event = _event(p, status, failure, subtype=subtype, action=action)
    event.query = None
    event.entities = entities
    event.patients = sorted(store.patients_of(session, returned)) if returned else []
    if in_transaction:
        from fhir_api.db import execute_batch

        execute_batch(session, store.event_batch([event], signing.mac_key()))
    else:
        store.commit_events(session, [event], signing.mac_key())


def write_batch(
    session: Session, res_type: str, res_id: str, version: int, deleted: bool, batch: Batch
) -> Batch:
    """The audit rows for one version being written, to travel in the write's own batch."""
    p = pending()
    if p is None or not enabled():
        return []
    patients = {res_id} if res_type == "Patient" else store.patients_in_batch(res_type, batch)
    if deleted and res_type != "Patient":
        patients = store.patients_of(session, [(res_type, res_id)])  # its index rows are about to go
    action = "D" if deleted else ("C" if version == 1 else "U")  # an update that creates is a C
    event = _event(p, 200, None, action=action)
    event.entities = [(f"{res_type}/{res_id}", str(version))]
    event.patients = sorted(patients)
    p.written += 1
    return store.event_batch([event], signing.mac_key())


def operation_batch(session: Session, entities: list[tuple[str, str | None]]) -> Batch:
    """The request's own event, for an operation that commits its change itself ($rotate-secret, $replay):
    it travels in that transaction (both or neither), and the request is not recorded again after."""
    p = pending()
    if p is None or not enabled():
        return []
    event = _event(p, 200, None)
    event.entities = entities
    p.written += 1
    return store.event_batch([event], signing.mac_key())


# -- building and writing ------------------------------------------------------------------------------------
def _actor() -> Actor:
    principal = g.get("principal")
    p = pending()
    facts = p.actor if p is not None else {}
    return Actor(
        client_id=facts.get("client_id") or getattr(principal, "client_id", None),
        address=request.remote_addr,
        role=facts.get("role") or getattr(principal, "role", None),
        jti=facts.get("jti") or getattr(principal, "jti", None),
        fhir_user=getattr(principal, "fhir_user", None),
        subject=getattr(principal, "subject", None),
    )


def _server() -> str:
    return current_app.config.get("PUBLIC_URL") or request.host_url.rstrip("/")


def _event(p: Pending, status: int, failure: dict[str, Any] | None, **override: str) -> Event:
    subtype = override.get("subtype", p.subtype)
    action = override.get("action", p.action)
    code_system = ev.RESTFUL if p.type is ev.REST else ev.DCM
    record_query = action in _RECORD_QUERY and bool(  # a read (R) never records its query: not looked at
        request.args
        or action == "E"
        or request.endpoint in _CONDITIONAL
        or request.headers.get("If-None-Exist")
    )
    event = Event(
        type=p.type,
        subtype={"system": code_system, "code": subtype, "display": _SUBTYPE_DISPLAY.get(subtype, subtype)},
        action=action,
        recorded=db.now(),
        actor=_actor(),
        server=_server(),
        outcome=ev.outcome_for(status),
        request_id=g.get("request_id"),
        query=queries.recorded(request) if record_query and request.blueprint != "auth" else None,
        detail=dict(p.detail),
    )
    if failure is not None:
        event.failure = queries.scrub_outcome(failure, request)
        issues = event.failure.get("issue") or [{}]
        event.outcome_desc = f"HTTP {status}: " + str(
            issues[0].get("diagnostics") or issues[0].get("code", "")
        )
    return event


def _failure_body(resp: Response) -> dict[str, Any] | None:
    if resp.status_code < 400:
        return None
    try:
        body = json.loads(resp.get_data())
    except ValueError:
        return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "unknown"}]}
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    if isinstance(body, dict) and "error" in body:  # OAuth error responses
        text = str(body.get("error_description") or body["error"])
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "security", "diagnostics": f"{body['error']}: {text}"}],
        }
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "unknown"}]}


def finish(resp: Response) -> Response:
    """Record the request unless its writes already did; fail closed."""
    p = pending()
    if p is None or not enabled():
        return resp
    if p.written and resp.status_code < 400 and not p.always:
        return resp
    if resp.status_code == 429:
        # Throttled before anything was read or changed; a row per refused request would let a flood
        # write to the database at the flood's rate. The log line and fhir_rate_limited_total count them.
        return resp
    try:
        session = db.session()
        failure = _failure_body(resp)
        event = _event(p, resp.status_code, failure)
        patients = set(p.patients)
        if p.returned and resp.status_code < 400:
            patients |= store.patients_of(session, p.returned)
        entities = p.entities
        target = request.view_args or {}
        if not entities and target.get("res_type") and target.get("res_id"):
            entities = [(f"{target['res_type']}/{target['res_id']}", None)]  # what a refused request named
            if target["res_type"] == "Patient":
                patients.add(target["res_id"])
        event.entities = list(dict.fromkeys(entities))
        event.patients = sorted(patients)
        flush = request.endpoint not in _READS_ONLY or flag(current_app.config.get("AUDIT_FLUSH_READS"))
        store.commit_events(session, [event], signing.mac_key(), flush=flush)
    except Exception as exc:
        log.error("audit record failed (%s) for %s %s", type(exc).__name__, request.method, request.path)
        from fhir_api import metrics

        metrics.audit_failed()
        with_session_rolled_back()
        return render(AuditUnavailable("The audit record could not be written, so nothing is returned"))
    return resp


def with_session_rolled_back() -> None:
    session = g.get("db_session")
    if session is not None:
        try:
            session.rollback()
        except Exception:
            log.warning("rollback after a failed audit record failed too")


class _WriteListener:
    """Plugged into the repository: every version written carries its audit rows."""

    def rows(
        self, session: Session, res_type: str, res_id: str, version: int, deleted: bool, batch: Batch
    ) -> Batch:
        return write_batch(session, res_type, res_id, version, deleted, batch)

    def failed(self, exc: BaseException) -> None:
        if pending() is not None and store.caused(exc):
            log.error("audit record failed (%s) with a write: nothing was changed", type(exc).__name__)
            raise AuditUnavailable("The audit record could not be written, so nothing was changed") from None


_LISTENER = _WriteListener()


def init_app(app: Flask) -> None:
    from resources.repository import WRITE_LISTENERS

    app.config.setdefault("AUDIT", True)
    if not any(isinstance(x, _WriteListener) for x in WRITE_LISTENERS):
        WRITE_LISTENERS.append(_LISTENER)

    @app.before_request
    def _begin() -> None:
        spec = ENDPOINTS.get(request.endpoint or "")
        if spec is not None and request.method != "OPTIONS":  # a preflight reads and changes nothing
            g.audit = Pending(*spec)

    @app.after_request
    def _finish(resp: Response) -> Response:
        return finish(resp)
