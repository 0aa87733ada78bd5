"""Run a search: keyset paging over sort keys, totals, _include/_revinclude, and the searchset Bundle."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import simplejson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.orm import Session, aliased

from fhir_api.errors import BadRequest, Issue, operation_outcome
from fhir_api.http import dumps
from resources.bundles import link_url
from resources.models import Resource, ResourceVersion
from resources.protection import service as protection
from resources.protection.blind import Unservable
from resources.registry import supported_types
from resources.repository import Stored, stored_from_row
from resources.search.compartments import compartment_clause
from resources.search.definitions import params_for
from resources.search.models import INDEX_TABLES, ReferenceIndex
from resources.search.query import RESULT_PARAMETERS, SearchContext, build_filters

SORT_COLUMNS = {
    "string": "value_norm",
    "token": "code",
    "number": "value",
    "quantity": "value",
    "reference": "target_id",
    "uri": "value",
}
MAX_INCLUDED = 1000
MAX_ITERATE = 4


@dataclass(frozen=True)
class SortKey:
    code: str
    descending: bool


@dataclass(frozen=True)
class IncludeSpec:
    source: str  # resource type, or "*"
    param: str  # reference parameter code, or "*"
    target: str | None
    iterate: bool


@dataclass
class SearchRequest:
    res_type: str | None
    types: tuple[str, ...]
    filters: list[tuple[str, str]]
    count: int
    sort: list[SortKey] = field(default_factory=list)
    cursor: dict[str, Any] | None = None
    includes: list[IncludeSpec] = field(default_factory=list)
    revincludes: list[IncludeSpec] = field(default_factory=list)
    total: str = "none"
    summary_count: bool = False
    compartment: tuple[str, str] | None = None  # (compartment type, owner id)


@dataclass
class SearchPage:
    matches: list[Stored]
    included: list[Stored]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None
    ignored: list[str]
    truncated_includes: bool = False


# -- request parsing ---------------------------------------------------------------------------------------
def _include_spec(value: str, iterate: bool, name: str) -> IncludeSpec:
    if value == "*":
        return IncludeSpec("*", "*", None, iterate)
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in supported_types():
        raise BadRequest(f"{name}: '{value}' is not SourceType:parameter[:TargetType]", expression=name)
    param = params_for(parts[0]).get(parts[1]) if parts[1] != "*" else None
    if parts[1] != "*" and (param is None or param.type != "reference"):
        raise BadRequest(f"{name}: '{parts[1]}' is not a reference parameter of {parts[0]}", expression=name)
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in supported_types():
        raise BadRequest(f"{name}: '{target}' is not a resource type", expression=name)
    return IncludeSpec(parts[0], parts[1], target, iterate)


def decode_cursor(raw: str) -> dict[str, Any]:
    try:
        data = simplejson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if (
            not isinstance(data, dict)
            or data.get("d") not in ("n", "p")
            or not isinstance(data.get("k"), list)
        ):
            raise ValueError
        data["k"] = [datetime.fromisoformat(v[1]) if v[0] == "t" else v[1] for v in data["k"]]
        return data
    except (ValueError, TypeError, IndexError, binascii.Error, simplejson.JSONDecodeError):
        raise BadRequest(
            "_cursor is not a paging cursor issued by this server", expression="_cursor"
        ) from None


def encode_cursor(direction: str, keys: Sequence[Any]) -> str:
    encoded = [["t", k.isoformat()] if isinstance(k, datetime) else ["v", k] for k in keys]
    raw = simplejson.dumps({"d": direction, "k": encoded}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_request(
    res_type: str | None, args: list[tuple[str, str]], *, default_count: int, max_count: int
) -> SearchRequest:
    count = default_count
    sort: list[SortKey] = []
    includes: list[IncludeSpec] = []
    revincludes: list[IncludeSpec] = []
    total = "none"
    cursor = None
    types: tuple[str, ...] = (res_type,) if res_type else ()
    summary_count = False
    for name, value in args:
        base = name.partition(":")[0]
        if base == "_count":
            if not value.isdigit():
                raise BadRequest("_count must be a non-negative integer", expression="_count")
            count = min(int(value), max_count)
        elif base == "_sort":
            for key in value.split(","):
                key = key.strip()
                if key:
                    sort.append(SortKey(key.lstrip("-"), key.startswith("-")))
        elif base in ("_include", "_revinclude"):
            iterate = name.endswith(":iterate") or name.endswith(":recurse")
            target = includes if base == "_include" else revincludes
            target.extend(_include_spec(v, iterate, name) for v in value.split(",") if v)
        elif base == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise BadRequest("_total is none, estimate or accurate", expression="_total")
            total = value
        elif base == "_summary" and value == "count":
            summary_count = True
            total = "accurate"
        elif base == "_cursor":
            cursor = decode_cursor(value)
        elif base == "_type" and res_type is None:
            wanted = tuple(t for v in value.split(",") if (t := v.strip()))
            unknown = [t for t in wanted if t not in supported_types()]
            if unknown:
                raise BadRequest(
                    f"_type names unknown resource types: {', '.join(unknown)}", expression="_type"
                )
            types = wanted
    for key in sort:
        if key.code not in ("_id", "_lastUpdated"):
            if res_type is None:
                raise BadRequest("System search sorts only by _id or _lastUpdated", expression="_sort")
            param = params_for(res_type).get(key.code)
            if param is None or param.type not in (*SORT_COLUMNS, "date"):
                raise BadRequest(f"Cannot sort {res_type} by '{key.code}'", expression="_sort")
            if key.code in protection.current().protected_params(res_type):
                raise Unservable(
                    f"Cannot sort {res_type} by '{key.code}': its values are stored encrypted, and a "
                    "keyed-hash index has no order. Sort by _id or _lastUpdated, or by an unprotected "
                    "parameter",
                    expression="_sort",
                )
    filters = [(n, v) for n, v in args]
    return SearchRequest(
        res_type, types, filters, count, sort, cursor, includes, revincludes, total, summary_count
    )


# -- SQL -----------------------------------------------------------------------------------------------------
def _sort_expression(res_type: str, outer: Any, key: SortKey, dialect: str) -> ColumnElement[Any]:
    if key.code == "_id":
        return outer.res_id
    if key.code == "_lastUpdated":
        return outer.last_updated
    param = params_for(res_type)[key.code]
    table = aliased(INDEX_TABLES[param.type])
    if param.type == "date":
        column = func.max(table.high) if key.descending else func.min(table.low)
    else:
        col = getattr(table, SORT_COLUMNS[param.type])
        if param.type in ("string", "token", "reference", "uri") and dialect == "postgresql":
            col = col.collate("C")  # byte order, as SQLite sorts: the same pages on both databases
        column = func.max(col) if key.descending else func.min(col)
    return (
        select(column)
        .where(table.res_type == res_type, table.res_id == outer.res_id, table.param == key.code)
        .scalar_subquery()
    )


def _after(
    keys: list[tuple[ColumnElement[Any], bool, bool]], values: Sequence[Any], nulls_last: bool = True
) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``keys`` (expression, descending, nullable); NULLs
    sort last, or first when walking a page backwards, which is the same order reversed."""
    if not keys:
        return false()
    (expr, descending, nullable), rest = keys[0], keys[1:]
    value = values[0]
    deeper = _after(rest, values[1:], nulls_last)
    if value is None:
        if nulls_last:
            return and_(expr.is_(None), deeper)
        return or_(expr.is_not(None), and_(expr.is_(None), deeper))
    beyond = expr < value if descending else expr > value
    if nullable and nulls_last:
        return or_(expr.is_(None), beyond, and_(expr == value, deeper))
    return or_(beyond, and_(expr == value, deeper))


def _order(keys: list[tuple[ColumnElement[Any], bool, bool]], nulls_last: bool = True) -> list[Any]:
    """ORDER BY terms; NULLS LAST/FIRST only on nullable keys, so the primary key can drive the scan."""
    out = []
    for expr, descending, nullable in keys:
        term = expr.desc() if descending else expr.asc()
        if nullable:
            term = term.nulls_last() if nulls_last else term.nulls_first()
        out.append(term)
    return out


def _page_query(session: Session, req: SearchRequest, ctx: SearchContext):
    outer = aliased(Resource)
    dialect = session.get_bind().dialect.name
    conditions: list[ColumnElement[bool]] = [outer.deleted.is_(False)]
    access = ctx.access
    if req.res_type:
        conditions.append(outer.res_type == req.res_type)
        if req.compartment:
            conditions.append(compartment_clause(*req.compartment, req.res_type, outer))
        conditions += build_filters(ctx, req.res_type, outer, req.filters)
        allowed = access.clause(ctx, req.res_type, outer) if access is not None else None
        if allowed is not None:
            conditions.append(allowed)
    else:
        types = req.types or supported_types()
        per_type = []
        restricted = access is not None and not access.unrestricted
        for res_type in types:
            clauses = build_filters(ctx, res_type, outer, req.filters)
            if restricted:
                if not access.permits(res_type, "s"):
                    continue
                allowed = access.clause(ctx, res_type, outer)
                if allowed is not None:
                    clauses.append(allowed)
            per_type.append(
                and_(outer.res_type == res_type, *clauses) if clauses else outer.res_type == res_type
            )
        if (
            not any(name.partition(":")[0] not in RESULT_PARAMETERS for name, _ in req.filters)
            and not req.types
            and not restricted
        ):
            per_type = [true()]
        conditions.append(or_(*per_type) if per_type else false())
        ctx.ignored = sorted(set(ctx.ignored))
    keys: list[tuple[ColumnElement[Any], bool, bool]] = []  # (expression, descending, nullable)
    for key in req.sort:  # in the order given; (type, id) always closes the order so pages are stable
        if key.code == "_id":
            keys.append((outer.res_id, key.descending, False))
        elif key.code == "_lastUpdated":
            keys.append((outer.last_updated, key.descending, False))
        elif req.res_type:
            keys.append((_sort_expression(req.res_type, outer, key, dialect), key.descending, True))
    keys += [(outer.res_type, False, False), (outer.res_id, False, False)]
    return outer, conditions, keys


def _fetch(
    session: Session, pairs: Sequence[tuple[str, str]], ctx: SearchContext | None = None
) -> list[Stored]:
    """Current versions of (type, id) pairs in one query, in the order given; with ``ctx``, only those
    its access allows (included resources pass the same checks as matches)."""
    if not pairs:
        return []
    r, v = aliased(Resource), aliased(ResourceVersion)
    stmt = (
        select(v)
        .join(r, and_(r.res_type == v.res_type, r.res_id == v.res_id, r.version == v.version))
        .where(tuple_(r.res_type, r.res_id).in_(list(pairs)), r.deleted.is_(False))
    )
    access = ctx.access if ctx is not None else None
    if access is not None and not access.unrestricted:
        per_type = []
        for res_type in dict.fromkeys(t for t, _ in pairs):
            allowed = access.clause(ctx, res_type, r, "r")
            per_type.append(
                and_(r.res_type == res_type, allowed) if allowed is not None else r.res_type == res_type
            )
        stmt = stmt.where(or_(*per_type))
    rows = session.execute(stmt).scalars()
    found = {(row.res_type, row.res_id): stored_from_row(row) for row in rows}
    return [found[p] for p in pairs if p in found]


def _count(session: Session, outer: Any, conditions: list[ColumnElement[bool]]) -> int:
    """The number of matches; ``_total=estimate`` gets this exact figure too (an allowed estimate)."""
    return int(session.execute(select(func.count()).select_from(outer).where(*conditions)).scalar_one())


def _included(
    session: Session, matches: list[Stored], req: SearchRequest, ctx: SearchContext
) -> tuple[list[Stored], bool]:
    seen = {(s.res_type, s.res_id) for s in matches}
    found: list[Stored] = []
    frontier = matches
    for depth in range(MAX_ITERATE + 1):
        specs = [s for s in req.includes if depth == 0 or s.iterate]
        rev = [s for s in req.revincludes if depth == 0 or s.iterate]
        if not frontier or not (specs or rev):
            break
        wanted: list[tuple[str, str]] = []
        ids = [(s.res_type, s.res_id) for s in frontier]
        ref = aliased(ReferenceIndex)
        for spec in specs:
            stmt = select(ref.target_type, ref.target_id).where(
                tuple_(ref.res_type, ref.res_id).in_(ids), ref.target_id.is_not(None)
            )
            if spec.source != "*":
                stmt = stmt.where(ref.res_type == spec.source)
            if spec.param != "*":
                stmt = stmt.where(ref.param == spec.param)
            if spec.target:
                stmt = stmt.where(ref.target_type == spec.target)
            wanted += [(t, i) for t, i in session.execute(stmt.limit(MAX_INCLUDED + 1)) if t]
        for spec in rev:
            stmt = select(ref.res_type, ref.res_id).where(tuple_(ref.target_type, ref.target_id).in_(ids))
            if spec.source != "*":
                stmt = stmt.where(ref.res_type == spec.source)
            if spec.param != "*":
                stmt = stmt.where(ref.param == spec.param)
            wanted += list(session.execute(stmt.limit(MAX_INCLUDED + 1)).tuples())
        fresh = list(dict.fromkeys(p for p in wanted if p not in seen))
        if len(found) + len(fresh) > MAX_INCLUDED:
            fresh = fresh[: MAX_INCLUDED - len(found)]
            batch = _fetch(session, fresh, ctx)
            found += batch
            return found, True
        seen.update(fresh)
        batch = _fetch(session, fresh, ctx)
        found += batch
        frontier = batch
    return found, False


def _segment(
    session: Session,
    stmt: Select[Any],
    keys: list[tuple[ColumnElement[Any], bool, bool]],
    after: Sequence[Any] | None,
    backwards: bool,
    limit: int,
) -> list[Any]:
    """One ordered, keyset-limited slice of a search; walking backwards reverses every key."""
    order_keys = [(e, not d, n) for e, d, n in keys] if backwards else keys
    if after is not None:
        stmt = stmt.where(_after(order_keys, after, nulls_last=not backwards))
    return list(session.execute(stmt.order_by(*_order(order_keys, nulls_last=not backwards)).limit(limit)))


def _lead_sort(
    req: SearchRequest, outer: Any, dialect: str
) -> tuple[Any, ColumnElement[Any], list[Any], Any]:
    """For ``_sort=<param>``: join the parameter's index row that holds the resource's sort value.

    Ordering by that indexed column (instead of a per-row MIN/MAX subquery) lets PostgreSQL walk the index
    in sort order and stop at the page size, so the cost of a page does not grow with the matches.
    Returns (join target, join condition, conditions keeping one row per resource, absent condition).
    """
    assert req.res_type
    key = req.sort[0]
    param = params_for(req.res_type)[key.code]
    table = INDEX_TABLES[param.type]
    d, d2, d3 = aliased(table, name="sort_d"), aliased(table, name="sort_d2"), aliased(table)
    name = ("high" if key.descending else "low") if param.type == "date" else SORT_COLUMNS[param.type]

    def column(alias: Any) -> ColumnElement[Any]:
        col = getattr(alias, name)
        return (
            col.collate("C")
            if dialect == "postgresql" and param.type not in ("date", "number", "quantity")
            else col
        )

    col, col2 = column(d), column(d2)
    better = col2 > col if key.descending else col2 < col
    join_on = and_(
        d.res_type == req.res_type,
        d.res_id == outer.res_id,
        d.param == key.code,
        getattr(d, name).is_not(None),
    )
    extreme = ~exists(
        select(literal(1)).where(
            d2.res_type == req.res_type,
            d2.res_id == d.res_id,
            d2.param == key.code,
            or_(
                better,
                and_(col2 == col, _physical_row_id("sort_d2", dialect) < _physical_row_id("sort_d", dialect)),
            ),
        )
    )
    absent = ~exists(
        select(literal(1)).where(
            d3.res_type == req.res_type,
            d3.res_id == outer.res_id,
            d3.param == key.code,
            getattr(d3, name).is_not(None),
        )
    )
    return d, join_on, [extreme, col], absent


def _physical_row_id(alias: str, dialect: str) -> ColumnElement[Any]:
    """The storage engine's own row address: breaks ties between one resource's equal index rows."""
    return literal_column(f"{alias}.{'ctid' if dialect == 'postgresql' else 'rowid'}")


def _page_rows(
    session: Session,
    req: SearchRequest,
    outer: Any,
    conditions: list[ColumnElement[bool]],
    keys: list[tuple[ColumnElement[Any], bool, bool]],
) -> tuple[list[Any], bool]:
    """The page's rows (type, id, sort values...) in order, and whether more lie beyond them."""
    backwards = bool(req.cursor and req.cursor["d"] == "p")
    cursor = req.cursor["k"] if req.cursor else None
    if cursor is not None and len(cursor) != len(keys):
        raise BadRequest("_cursor does not belong to this search", expression="_cursor")
    n = req.count
    rest = keys[1:]
    if not (req.res_type and keys[0][2]):  # no parameter sort: one query in (sort..., type, id) order
        stmt = select(outer.res_type, outer.res_id, *[e for e, _, _ in keys]).where(*conditions)
        rows = _segment(session, stmt, keys, cursor, backwards, n + 1)
    else:
        # Two segments: resources that have the sort value (index-driven), then those without (NULLs last).
        target, join_on, (extreme, col), absent = _lead_sort(req, outer, session.get_bind().dialect.name)
        keyed_keys = [(col, keys[0][1], False), *rest]
        keyed_stmt = (
            select(outer.res_type, outer.res_id, col, *[e for e, _, _ in rest])
            .select_from(outer)
            .join(target, join_on)
            .where(*conditions, extreme)
        )
        null_stmt = select(outer.res_type, outer.res_id, null(), *[e for e, _, _ in rest]).where(
            *conditions, absent
        )
        first, second = (keyed_stmt, keyed_keys), (null_stmt, rest)
        if backwards:
            first, second = second, first
        in_first = cursor is None or ((cursor[0] is not None) != backwards)
        if in_first:
            after = None if cursor is None else (cursor if first[0] is keyed_stmt else cursor[1:])
            rows = _segment(session, first[0], first[1], after, backwards, n + 1)
            if len(rows) <= n:
                rows += _segment(session, second[0], second[1], None, backwards, n + 1 - len(rows))
        else:
            after = cursor if second[0] is keyed_stmt else cursor[1:]
            rows = _segment(session, second[0], second[1], after, backwards, n + 1)
    more = len(rows) > n
    rows = rows[:n]
    if backwards:
        rows.reverse()
    return rows, more


def run(session: Session, req: SearchRequest, ctx: SearchContext) -> SearchPage:
    outer, conditions, keys = _page_query(session, req, ctx)
    total = _count(session, outer, conditions) if req.total != "none" else None
    if req.summary_count or req.count == 0:
        return SearchPage([], [], total, None, None, ctx.ignored)
    backwards = bool(req.cursor and req.cursor["d"] == "p")
    rows, more = _page_rows(session, req, outer, conditions, keys)
    matches = _fetch(session, [(r[0], r[1]) for r in rows])
    has_next = more if not backwards else True
    has_prev = (more if backwards else True) if req.cursor else False
    next_cursor = encode_cursor("n", list(rows[-1][2:])) if rows and has_next else None
    prev_cursor = encode_cursor("p", list(rows[0][2:])) if rows and has_prev else None
    included, truncated = (
        _included(session, matches, req, ctx) if (req.includes or req.revincludes) else ([], False)
    )
    return SearchPage(matches, included, total, next_cursor, prev_cursor, ctx.ignored, truncated)


# -- Bundle --------------------------------------------------------------------------------------------------
def searchset_bundle(
    page: SearchPage, base: str, path: str, args: list[tuple[str, str]], render: Any = None
) -> str:
    """The searchset as JSON text; ``render`` may rewrite each stored body (e.g. for _summary)."""
    links = [{"relation": "self", "url": link_url(base, path, args, None)}]
    if page.next_cursor:
        links.append({"relation": "next", "url": link_url(base, path, args, page.next_cursor)})
    if page.previous_cursor:
        links.append({"relation": "previous", "url": link_url(base, path, args, page.previous_cursor)})
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        head["total"] = page.total

    def entry(s: Stored, mode: str) -> str:
        body = render(s) if render else s.body
        return (
            f'{{"fullUrl":{dumps(f"{base}/{s.res_type}/{s.res_id}")},"resource":{body},'
            f'"search":{{"mode":"{mode}"}}}}'
        )

    entries = [entry(s, "match") for s in page.matches] + [entry(s, "include") for s in page.included]
    notes = []
    if page.ignored:
        notes.append(
            Issue(
                f"Ignored unknown or unsupported search parameters: {', '.join(page.ignored)}",
                code="not-supported",
                severity="warning",
            )
        )
    if page.truncated_includes:
        notes.append(
            Issue(f"Included resources were limited to {MAX_INCLUDED}", code="too-costly", severity="warning")
        )
    if notes:
        outcome = operation_outcome(notes, "informational")
        entries.append(f'{{"resource":{dumps(outcome)},"search":{{"mode":"outcome"}}}}')
    text = dumps({**head, "link": links})
    return text[:-1] + f',"entry":[{",".join(entries)}]}}'


# -- conditional interactions -------------------------------------------------------------------------------
def criteria_conditions(
    session: Session, res_type: str, criteria: list[tuple[str, str]], access: Any = None
) -> tuple[Any, list[ColumnElement[bool]]]:
    """(Resource alias, conditions) selecting the current resources that match criteria (strict: unknown
    parameters are errors, never ignored) among those ``access`` lets the caller see. The conditions are
    SQL evaluated when run (membership, compartments), so a statement built on them can be run again."""
    req = parse_request(res_type, criteria, default_count=1, max_count=1_000_000)  # paging is not used
    req.count, req.sort, req.cursor, req.total = 1, [], None, "none"
    ctx = SearchContext(session=session, strict=True, access=access)
    outer, conditions, _keys = _page_query(session, req, ctx)
    return outer, conditions


def match_ids(
    session: Session, res_type: str, criteria: list[tuple[str, str]], limit: int, access: Any = None
) -> list[str]:
    """Ids of current resources matching criteria among those ``access`` lets the caller see."""
    outer, conditions = criteria_conditions(session, res_type, criteria, access)
    stmt = select(outer.res_id).where(*conditions).order_by(outer.res_id).limit(limit)
    return list(session.execute(stmt).scalars())


def lock_criteria(session: Session, res_type: str, criteria: list[tuple[str, str]]) -> None:
    """Serialise conditional writes with the same criteria, so two racing creates leave one resource.

    PostgreSQL: a transaction-scoped advisory lock on a hash of the normalised criteria (the search that
    follows then sees what the other transaction committed). SQLite: writers already hold the database
    lock from BEGIN IMMEDIATE.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    normal = "&".join(
        f"{k}={v}" for k, v in sorted(c for c in criteria if c[0] not in ("_format", "_pretty"))
    )
    digest = hashlib.sha256(f"{res_type}?{normal}".encode()).digest()
    session.execute(
        text("SELECT pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(digest[:8], "big", signed=True)}
    )
