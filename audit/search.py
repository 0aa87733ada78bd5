"""Auditor search over the audit tables: ``AuditEvent?patient=&agent=&entity=&date=&action=...``.

Newest first, keyset-paged on ``pos``. Patients, entities and agents are matched through ``audit_link``
(one indexed lookup each); dates, action, type, subtype and outcome on the event row itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from audit.models import AuditLink, AuditRow
from fhir_api.errors import BadRequest
from resources.dates import parse_range

LINKED = {"patient": "patient", "agent": "agent", "entity": "entity"}
COLUMNS = {"action": "action", "type": "type_code", "subtype": "subtype", "outcome": "outcome"}
PASSIVE = frozenset({"_format", "_pretty", "_count", "_cursor"})
SUPPORTED = frozenset({"date", "_id", *LINKED, *COLUMNS})
DATE_PREFIXES = ("eq", "gt", "lt", "ge", "le", "sa", "eb")


@dataclass
class AuditQuery:
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    limit: int = 50
    before: int | None = None  # pos cursor: events older than this


def _ref(kind: str, value: str, base: str) -> str:
    value = value.strip()
    if value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    if kind == "patient" and "/" not in value:
        return f"Patient/{value}"
    if kind == "entity":
        value = value.split("/_history/")[0]
    return value


def _date_condition(value: str) -> ColumnElement[bool]:
    prefixed = value[:2] in DATE_PREFIXES and len(value) > 2 and value[2].isdigit()
    prefix, rest = (value[:2], value[2:]) if prefixed else ("eq", value)
    rng = parse_range(rest, "date")
    col = AuditRow.recorded
    return {
        "eq": and_(col >= rng.low, col < rng.high),
        "gt": col >= rng.high,
        "sa": col >= rng.high,
        "ge": col >= rng.low,
        "lt": col < rng.low,
        "eb": col < rng.low,
        "le": col < rng.high,
    }[prefix]


def _code(value: str) -> str:
    return value.rsplit("|", 1)[-1]


def parse(args: list[tuple[str, str]], base: str, default_count: int, max_count: int) -> AuditQuery:
    q = AuditQuery(limit=default_count)
    for name, value in args:
        if name in PASSIVE:
            continue
        if name not in SUPPORTED:
            raise BadRequest(
                f"AuditEvent has no search parameter '{name}' here; "
                f"use one of: {', '.join(sorted(SUPPORTED))}",
                expression=name,
            )
        values = [v for v in value.split(",") if v]
        if not values:
            continue
        if name == "date":
            q.conditions += [_date_condition(v) for v in values]
        elif name == "_id":
            q.conditions.append(AuditRow.event_id.in_(values))
        elif name in LINKED:
            q.conditions.append(linked(LINKED[name], [_ref(LINKED[name], v, base) for v in values]))
        else:
            column = getattr(AuditRow, COLUMNS[name])
            q.conditions.append(or_(*(column == _code(v) for v in values)))
    count = dict(args).get("_count")
    if count is not None:
        if not count.isdigit():
            raise BadRequest("_count must be a non-negative integer", expression="_count")
        q.limit = min(int(count), max_count)
    cursor = dict(args).get("_cursor")
    if cursor:
        if not cursor.isdigit():
            raise BadRequest("_cursor is not a paging cursor issued by this server", expression="_cursor")
        q.before = int(cursor)
    return q


def linked(kind: str, refs: list[str]) -> ColumnElement[bool]:
    """Events naming any of ``refs``: a Patient entity is kept as a patient link, a client as the event's
    ``client_id`` column (see ``Event.links``)."""
    kinds = ["entity", "patient"] if kind == "entity" else [kind]
    rows = select(AuditLink.event_id).where(AuditLink.kind.in_(kinds), AuditLink.ref.in_(refs))
    condition = AuditRow.event_id.in_(rows)
    if kind == "agent":
        condition = or_(AuditRow.client_id.in_(refs), condition)
    return condition


def statement(q: AuditQuery) -> Select[Any]:
    stmt = select(AuditRow.pos, AuditRow.event_id, AuditRow.body).where(*q.conditions)
    if q.before is not None:
        stmt = stmt.where(AuditRow.pos < q.before)
    return stmt.order_by(AuditRow.pos.desc())


def run(session: Session, q: AuditQuery) -> tuple[list[tuple[int, str, str]], bool]:
    """One page of (pos, event id, canonical JSON), and whether more follow."""
    rows = session.execute(statement(q).limit(q.limit + 1)).all()
    return [(r[0], r[1], r[2]) for r in rows[: q.limit]], len(rows) > q.limit


def read(session: Session, event_id: str) -> str | None:
    return session.execute(select(AuditRow.body).where(AuditRow.event_id == event_id)).scalar()


def between(low: datetime | None, high: datetime | None) -> list[ColumnElement[bool]]:
    out = []
    if low is not None:
        out.append(AuditRow.recorded >= low)
    if high is not None:
        out.append(AuditRow.recorded < high)
    return out


def capability() -> dict[str, Any]:
    """AuditEvent's entry in the CapabilityStatement: read and search, for auditors, from the audit log."""
    hl7 = "http://hl7.org/fhir/SearchParameter/AuditEvent-"
    types = {"date": "date", "patient": "reference", "agent": "reference", "entity": "reference"}
    types.update({name: "token" for name in COLUMNS})
    return {
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The audit log: written by the server alone (every write path answers 405), read "
        "and searched by tokens of the auditor role only (newest first).",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": [
            {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"}
        ]
        + [{"name": n, "definition": f"{hl7}{n}", "type": t} for n, t in sorted(types.items())],
    }
