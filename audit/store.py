"""Writing audit rows: the only code that inserts into the audit tables (the chainer aside)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from audit.events import Event, canonical
from audit.models import AuditLink, AuditRow
from audit.signing import event_mac
from fhir_api.db import Batch, commit_batch
from resources.search.compartments import compartments
from resources.search.models import ReferenceIndex

_INSERT_EVENT = insert(AuditRow.__table__)
_INSERT_LINK = insert(AuditLink.__table__)
REF_CHARS = 256


def event_batch(events: Iterable[Event], mac_key: bytes | None) -> Batch:
    """The statements that append ``events`` (and what auditors search them by) in the caller's
    transaction: a write's events travel in the same round trip as the write."""
    rows, links = [], []
    for e in events:
        body = canonical(e.resource())
        rows.append(
            {
                "event_id": e.event_id,
                "recorded": e.recorded,
                "type_code": e.type["code"],
                "subtype": e.subtype["code"],
                "action": e.action,
                "outcome": e.outcome,
                "client_id": e.actor.client_id,
                "body": body,
                "mac": event_mac(mac_key, body) if mac_key else None,
            }
        )
        links += [
            {"event_id": e.event_id, "kind": kind, "ref": ref[:REF_CHARS], "recorded": e.recorded}
            for kind, ref in sorted(e.links())
        ]
    return [(_INSERT_EVENT, rows), (_INSERT_LINK, links)]


def commit_events(
    session: Session, events: list[Event], mac_key: bytes | None, *, flush: bool = True
) -> None:
    """Append ``events`` and commit (reads, searches, refusals: their record is a transaction of its own,
    or the end of the request's read transaction on PostgreSQL). ``flush=False``: see
    ``fhir_api.db.commit_batch`` (the records of requests that only read, unless FHIR_AUDIT_FLUSH_READS)."""
    commit_batch(session, event_batch(events, mac_key), flush=flush)


def caused(exc: BaseException) -> bool:
    """Whether a database error came from the audit tables (their names appear in the driver's message)."""
    return "audit_" in str(exc)


def patients_of(session: Session, refs: Iterable[tuple[str, str]]) -> set[str]:
    """Ids of the patients whose compartment holds any of these resources: one query per resource type."""
    by_type: dict[str, set[str]] = defaultdict(set)
    for res_type, res_id in refs:
        by_type[res_type].add(res_id)
    members = compartments()["Patient"]
    found = set(by_type.pop("Patient", ()))
    for res_type, ids in by_type.items():
        params = [p for p in members.get(res_type, ()) if p != "{def}"]
        if not params:
            continue
        stmt = select(ReferenceIndex.target_id).where(
            ReferenceIndex.res_type == res_type,
            ReferenceIndex.res_id.in_(sorted(ids)),
            ReferenceIndex.param.in_(params),
            ReferenceIndex.target_type == "Patient",
        )
        found.update(t for t in session.execute(stmt).scalars() if t)
    return found


def patients_in_batch(res_type: str, batch: Batch) -> set[str]:
    """Patients a resource being written references through its Patient-compartment parameters, read off
    the reference-index rows already computed for the write (no query)."""
    if res_type == "Patient":
        return set()
    params = set(compartments()["Patient"].get(res_type, ()))
    found: set[str] = set()
    for stmt, rows in batch:
        if getattr(getattr(stmt, "table", None), "name", None) != ReferenceIndex.__tablename__:
            continue
        if not rows or "target_type" not in rows[0]:
            continue
        found.update(
            r["target_id"]
            for r in rows
            if r["target_type"] == "Patient" and r["param"] in params and r["target_id"]
        )
    return found
