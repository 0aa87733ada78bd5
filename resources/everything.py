"""``Patient/{id}/$everything`` and ``Patient/$everything``: a patient's record, type by type, paged.

The Patient first, then every type of the Patient compartment (official CompartmentDefinition) in name
order, each through the search engine as a compartment search, so the token's scopes, compartment and
payor restrictions apply exactly as they do to searches. The paging cursor names the type and the search
engine's own cursor within it. ``_type`` narrows the types, ``_since`` keeps what changed since then.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fhir_api import db
from fhir_api.errors import BadRequest
from resources.repository import ResourceRepository, Stored
from resources.search.compartments import compartments
from resources.search.query import SearchContext
from resources.search.results import parse_request
from resources.search.results import run as run_search


@dataclass
class Page:
    entries: list[Stored]
    next_cursor: str | None


def member_types(only: list[str] | None) -> list[str]:
    types = ["Patient", *sorted(t for t in compartments()["Patient"] if t != "Patient")]
    if only:
        unknown = [t for t in only if t not in types]
        if unknown:
            raise BadRequest(
                f"_type names types outside the Patient compartment: {', '.join(unknown)}", expression="_type"
            )
        types = [t for t in types if t in only]
    return types


def _cursor(value: str | None, types: list[str]) -> tuple[int, str | None]:
    if not value:
        return 0, None
    name, _, inner = value.partition(":")
    if name not in types:
        raise BadRequest("_cursor is not a paging cursor issued by this server", expression="_cursor")
    return types.index(name), inner or None


def _pages(
    session: Session,
    ctx: SearchContext,
    pid: str,
    res_type: str,
    since: str | None,
    count: int,
    cursor: str | None,
) -> Iterator[tuple[list[Stored], str | None]]:
    args = [("_id", pid)] if res_type == "Patient" else []
    if since:
        args.append(("_lastUpdated", f"ge{since}"))
    if cursor:
        args.append(("_cursor", cursor))
    req = parse_request(res_type, args, default_count=count, max_count=count)
    if res_type != "Patient":
        req.compartment = ("Patient", pid)
    page = run_search(session, req, ctx)
    yield page.matches, page.next_cursor


def everything(
    session: Session,
    ctx: SearchContext,
    pid: str,
    *,
    types: list[str] | None,
    since: str | None,
    count: int,
    cursor: str | None,
) -> Page:
    """One page of the patient's record (at most ``count`` resources)."""
    order = member_types(types)
    if cursor and cursor.startswith(REFERENCED):
        return _referenced(session, ctx, pid, types, since, count, cursor[len(REFERENCED) :])
    start, inner = _cursor(cursor, order)
    out: list[Stored] = []
    for i in range(start, len(order)):
        res_type = order[i]
        if ctx.access is not None and not ctx.access.permits(res_type, "s"):
            inner = None
            continue
        for matches, next_inner in _pages(session, ctx, pid, res_type, since, count - len(out), inner):
            out.extend(matches)
            if next_inner:
                return Page(out, f"{res_type}:{next_inner}")
        inner = None
        if len(out) >= count:
            following = next((t for t in order[i + 1 :]), None)
            return Page(out, f"{following}:" if following else REFERENCED)
    rest = _referenced(session, ctx, pid, types, since, count - len(out), "")
    return Page(out + rest.entries, rest.next_cursor)


REFERENCED = "@referenced:"


def _referenced(
    session: Session,
    ctx: SearchContext,
    pid: str,
    types: list[str] | None,
    since: str | None,
    count: int,
    after: str,
) -> Page:
    """The resources outside the compartment that its members reference (practitioners, organizations,
    locations, medications), in (type, id) order after ``after``."""
    if count <= 0:
        return Page([], REFERENCED + after)
    members = compartments()["Patient"]
    low = tuple(after.split("/", 1)) if after else None
    refs = ResourceRepository(session).referenced_from_compartment(
        pid, {t: tuple(p for p in ps if p != "{def}") for t, ps in members.items()}, low, count + 1
    )
    wanted = set(types) if types else None
    out: list[Stored] = []
    last = None
    for res_type, res_id in refs[:count]:
        last = f"{res_type}/{res_id}"
        if (wanted is not None and res_type not in wanted) or res_type in members or res_type == "Patient":
            continue
        access = ctx.access
        if access is not None and not access.permits(res_type, "r"):
            continue
        if access is not None and access.narrowed and not access.visible(session, res_type, res_id):
            continue
        found = ResourceRepository(session).read(res_type, res_id)
        if found is None or found.deleted:
            continue
        if since and db.format_instant(found.last_updated) < since:
            continue
        out.append(found)
    more = len(refs) > count
    return Page(out, REFERENCED + last if more and last else None)


def all_patients(
    session: Session,
    ctx: SearchContext,
    *,
    types: list[str] | None,
    since: str | None,
    count: int,
    cursor: str | None,
) -> tuple[list[Stored], str | None]:
    """Type-level $everything: patient after patient (one Patient search page each), each patient's record
    paged by ``everything``. Cursor: the Patient search's cursor, then the record's."""
    outer, _, inner = (cursor or "").partition("|")
    out: list[Stored] = []
    while len(out) < count:
        args = [("_count", "1"), ("_sort", "_id")] + ([("_cursor", outer)] if outer else [])
        page = run_search(session, parse_request("Patient", args, default_count=1, max_count=1), ctx)
        if not page.matches:
            return out, None
        pid = page.matches[0].res_id
        record = everything(
            session, ctx, pid, types=types, since=since, count=count - len(out), cursor=inner or None
        )
        out.extend(record.entries)
        if record.next_cursor:
            return out, f"{outer}|{record.next_cursor}"
        if not page.next_cursor:
            return out, None
        outer, inner = page.next_cursor, ""
    return out, f"{outer}|"
