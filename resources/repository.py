"""Storage of resource versions: the only module that queries the resource tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from fhir_api.db import Batch, execute_batch, fetch_one
from resources import jsonio, owners
from resources.dates import DateRange
from resources.models import Resource, ResourceVersion
from resources.protection import service as protection
from resources.search.indexer import blind_context, index_batch
from resources.search.models import ReferenceIndex

# (current Resource alias, ResourceVersion alias, res_type or None) -> the SQL condition on the pair for
# versions the caller may see, or None: all visible (resources.access.Access.versions_condition)
Visibility = Any


class WriteListener(Protocol):
    """Rows that must commit with every version written (the audit log's), and the translation of a
    failure those rows caused."""

    def rows(
        self, session: Session, res_type: str, res_id: str, version: int, deleted: bool, batch: Batch
    ) -> Batch: ...

    def failed(self, exc: BaseException) -> None: ...


WRITE_LISTENERS: list[WriteListener] = []


@dataclass(frozen=True)
class Stored:
    """One stored version as the REST layer sees it; ``body`` is the stored JSON text (None if deleted)."""

    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    deleted: bool
    method: str
    body: str | None
    seq: int = 0


@dataclass(frozen=True)
class HistoryQuery:
    """A history page: newest first, keyset-paged on ``seq`` (stable while new versions arrive)."""

    limit: int
    res_type: str | None = None
    res_id: str | None = None
    since: datetime | None = None
    at: DateRange | None = None
    before_seq: int | None = None  # next page: versions older than this
    after_seq: int | None = None  # previous page: versions newer than this
    visible: Visibility = None  # None: every version visible


_COLUMNS = (
    ResourceVersion.res_type,
    ResourceVersion.res_id,
    ResourceVersion.version,
    ResourceVersion.last_updated,
    ResourceVersion.deleted,
    ResourceVersion.method,
    ResourceVersion.body,
    ResourceVersion.seq,
    ResourceVersion.data_key,
)
_CURRENT = select(*_COLUMNS).join(
    Resource,
    and_(
        Resource.res_type == ResourceVersion.res_type,
        Resource.res_id == ResourceVersion.res_id,
        Resource.version == ResourceVersion.version,
    ),
)
"""Every resource's current version (the version its pointer row names)."""
_READ_CURRENT = _CURRENT.where(Resource.res_type == bindparam("t"), Resource.res_id == bindparam("i"))
_READ_VERSION = select(*_COLUMNS).where(
    ResourceVersion.res_type == bindparam("t"),
    ResourceVersion.res_id == bindparam("i"),
    ResourceVersion.version == bindparam("v"),
)


_RESOURCE = Resource.__table__
_INSERT_RESOURCE = insert(_RESOURCE)
_UPDATE_RESOURCE = (
    update(_RESOURCE)
    .where(_RESOURCE.c.res_type == bindparam("w_type"), _RESOURCE.c.res_id == bindparam("w_id"))
    .values(
        version=bindparam("new_version"),
        deleted=bindparam("new_deleted"),
        last_updated=bindparam("new_last_updated"),
    )
)
_INSERT_VERSION = insert(ResourceVersion.__table__)


def _prefixed(values: dict[str, Any]) -> dict[str, Any]:
    return {f"new_{k}": v for k, v in values.items()}


def _opened(res_type: str, res_id: str, version: int, body: str | None, data_key: str | None) -> str | None:
    """The clear JSON of a stored body (its sealed elements opened; a body without any is as stored)."""
    if body is None or data_key is None:
        return body
    return protection.current().open(res_type, res_id, version, body, data_key)


def stored_from_row(v: ResourceVersion) -> Stored:
    body = _opened(v.res_type, v.res_id, v.version, v.body, v.data_key)
    return Stored(v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.method, body, v.seq)


def _stored_row(row: Any) -> Stored:
    """A row of ``_COLUMNS`` as the REST layer sees it."""
    res_type, res_id, version, last_updated, deleted, method, body, seq, data_key = row
    body = _opened(res_type, res_id, version, body, data_key)
    return Stored(res_type, res_id, version, last_updated, deleted, method, body, seq)


def _visible(visible: Visibility, rv: Any, res_type: str | None) -> Any:
    """The condition on versions ``rv`` that ``visible`` lets through: the caller must be able to see the
    resource now, and the version by its own content (both decided by resources.access)."""
    if visible is None:
        return None
    current = aliased(Resource)
    condition = visible(current, rv, res_type)
    if condition is None:
        return None
    return exists().where(current.res_type == rv.res_type, current.res_id == rv.res_id, condition)


class ResourceRepository:
    def __init__(self, session: Session, *, index: bool = True, local_base: str | None = None) -> None:
        """``local_base`` is this server's FHIR base: absolute references under it are local ones.
        ``index=False`` skips search-index rows: only for benchmarks that price indexing."""
        self.session = session
        self.index = index
        self.local_base = local_base

    def current(self, res_type: str, res_id: str, *, lock: bool = False) -> Resource | None:
        stmt = select(Resource).where(Resource.res_type == res_type, Resource.res_id == res_id)
        if lock:
            stmt = stmt.with_for_update()
        return self.session.execute(stmt).scalar_one_or_none()

    def read(self, res_type: str, res_id: str) -> Stored | None:
        """The current version: one indexed join, run as a cached Core statement (the hottest path)."""
        row = fetch_one(self.session, _READ_CURRENT, {"t": res_type, "i": res_id})
        return _stored_row(row) if row else None

    def vread(self, res_type: str, res_id: str, version: int, visible: Visibility = None) -> Stored | None:
        """One version; None when it does not exist or ``visible`` hides it (the two read alike)."""
        params = {"t": res_type, "i": res_id, "v": version}
        condition = _visible(visible, ResourceVersion, res_type)
        stmt = _READ_VERSION if condition is None else _READ_VERSION.where(condition)
        row = self.session.connection().execute(stmt, params).one_or_none()
        return _stored_row(row) if row else None

    def write(
        self,
        current: Resource | None,
        *,
        res_type: str,
        res_id: str,
        version: int,
        method: str,
        last_updated: datetime,
        resource: dict[str, Any] | None,
    ) -> Stored:
        """Append a version, move the current pointer and re-index; the caller owns the transaction.

        This is the one place a resource reaches storage: protected elements are sealed here, and their
        search parameters indexed as blind hashes (resources.protection).
        """
        deleted = resource is None
        body = None if resource is None else jsonio.dumps(resource)
        shield = protection.current()
        stored_body, data_key, key_id = body, None, None
        if resource is not None:
            sealed = shield.seal(res_type, res_id, version, resource)
            if sealed is not None:
                stored_body, data_key, key_id = sealed
        pointer = {"version": version, "deleted": deleted, "last_updated": last_updated}
        batch: Batch = []
        if current is None:
            batch.append((_INSERT_RESOURCE, [{"res_type": res_type, "res_id": res_id, **pointer}]))
        else:
            batch.append((_UPDATE_RESOURCE, [{"w_type": res_type, "w_id": res_id, **_prefixed(pointer)}]))
        version_row = {
            "res_type": res_type,
            "res_id": res_id,
            "method": method,
            "body": stored_body,
            "key_id": key_id,
            "data_key": data_key,
            **pointer,
        }
        batch.append((_INSERT_VERSION, [version_row]))
        if self.index:
            batch += index_batch(
                res_type,
                res_id,
                resource,
                replace=current is not None,
                local_base=self.local_base,
                blind=blind_context(self.session, shield, res_type, resource is not None),
            )
        if resource is not None:
            if self.index:  # the owners, off the reference rows just extracted for the index
                references = owners.references_in(batch)
            else:
                references = owners.references(res_type, resource, self.local_base)
            batch.append((owners.INSERT, owners.rows(res_type, res_id, version, references)))
        elif current is not None:
            previous = {"o_type": res_type, "o_id": res_id, "o_version": current.version}
            batch.append((owners.COPY, [{**previous, "o_new_version": version}]))
        for listener in WRITE_LISTENERS:
            batch += listener.rows(self.session, res_type, res_id, version, deleted, batch)
        try:
            execute_batch(self.session, batch)  # one round trip on PostgreSQL
        except Exception as exc:
            for listener in WRITE_LISTENERS:
                listener.failed(exc)
            raise
        if current is not None:
            self.session.expire(current)  # the pointer row changed underneath the ORM object
        return Stored(res_type, res_id, version, last_updated, deleted, method, body)

    def current_batch(
        self, after: tuple[str, str] | None, limit: int, res_type: str | None = None, *, lock: bool = False
    ) -> list[Stored]:
        """Current, non-deleted versions in (type, id) order after ``after``: for reindexing in batches."""
        stmt = (
            select(*_COLUMNS)
            .join(
                Resource,
                and_(
                    Resource.res_type == ResourceVersion.res_type,
                    Resource.res_id == ResourceVersion.res_id,
                    Resource.version == ResourceVersion.version,
                ),
            )
            .where(Resource.deleted.is_(False))
        )
        if res_type:
            stmt = stmt.where(Resource.res_type == res_type)
        if after:
            stmt = stmt.where(tuple_(Resource.res_type, Resource.res_id) > after)
        stmt = stmt.order_by(Resource.res_type, Resource.res_id).limit(limit)
        if lock:
            stmt = stmt.with_for_update(of=Resource)
        return [_stored_row(row) for row in self.session.execute(stmt)]

    def types_present(self) -> list[str]:
        """Resource types with at least one current resource, in name order."""
        stmt = (
            select(Resource.res_type)
            .where(Resource.deleted.is_(False))
            .distinct()
            .order_by(Resource.res_type)
        )
        return list(self.session.execute(stmt).scalars())

    def sealed_lines(self, res_type: str, ids: list[str]) -> list[bytes]:
        """Export lines for the current versions of ``ids``, bodies exactly as stored (protected elements
        still sealed): ``{"t","i","v","k","b"}``, the body last so a reader can cut it out unparsed."""
        if not ids:
            return []
        stmt = (
            select(
                ResourceVersion.res_id,
                ResourceVersion.version,
                ResourceVersion.data_key,
                ResourceVersion.body,
            )
            .join(
                Resource,
                and_(
                    Resource.res_type == ResourceVersion.res_type,
                    Resource.res_id == ResourceVersion.res_id,
                    Resource.version == ResourceVersion.version,
                ),
            )
            .where(Resource.res_type == res_type, Resource.res_id.in_(ids), Resource.deleted.is_(False))
            .order_by(Resource.res_id)
        )
        out = []
        head = jsonio.dumps(res_type)
        for res_id, version, data_key, body in self.session.execute(stmt):
            key = jsonio.dumps(data_key) if data_key else "null"
            line = f'{{"t":{head},"i":{jsonio.dumps(res_id)},"v":{version},"k":{key},"b":{body}}}\n'
            out.append(line.encode())
        return out

    def referenced_from_compartment(
        self,
        pid: str,
        member_params: dict[str, tuple[str, ...]],
        after: tuple[str, ...] | None,
        limit: int,
    ) -> list[tuple[str, str]]:
        """(type, id) of local resources referenced by members of Patient ``pid``'s compartment (members
        found through their compartment parameters), in (type, id) order after ``after``."""
        member = aliased(ReferenceIndex)
        pairs = [and_(member.res_type == t, member.param.in_(ps)) for t, ps in member_params.items() if ps]
        members = select(member.res_type, member.res_id).where(
            member.target_type == "Patient", member.target_id == pid, or_(*pairs)
        )
        ref = aliased(ReferenceIndex)
        stmt = (
            select(ref.target_type, ref.target_id)
            .where(tuple_(ref.res_type, ref.res_id).in_(members), ref.target_type.is_not(None))
            .distinct()
            .order_by(ref.target_type, ref.target_id)
            .limit(limit)
        )
        if after is not None and len(after) == 2:
            stmt = stmt.where(tuple_(ref.target_type, ref.target_id) > tuple_(*after))
        return [(t, i) for t, i in self.session.execute(stmt) if t and i]

    def count_current(self, res_type: str | None = None) -> int:
        stmt = select(func.count()).select_from(Resource).where(Resource.deleted.is_(False))
        if res_type:
            stmt = stmt.where(Resource.res_type == res_type)
        return int(self.session.execute(stmt).scalar_one())

    def history(self, q: HistoryQuery) -> tuple[Sequence[Stored], bool]:
        """One page of versions, newest first, and whether more exist beyond it in the paging direction."""
        rv = ResourceVersion
        stmt = select(rv)
        if q.res_type:
            stmt = stmt.where(rv.res_type == q.res_type)
        if q.res_id:
            stmt = stmt.where(rv.res_id == q.res_id)
        if q.since:
            stmt = stmt.where(rv.last_updated >= q.since)
        if q.at:
            later = aliased(ResourceVersion)
            superseded = exists().where(
                later.res_type == rv.res_type,
                later.res_id == rv.res_id,
                later.version > rv.version,
                later.last_updated <= q.at.low,
            )
            stmt = stmt.where(rv.last_updated < q.at.high, ~superseded)
        condition = _visible(q.visible, rv, q.res_type)
        if condition is not None:  # in the query, so paging never counts a hidden version
            stmt = stmt.where(condition)
        if q.after_seq is not None:
            stmt = stmt.where(rv.seq > q.after_seq).order_by(rv.seq.asc())
        else:
            if q.before_seq is not None:
                stmt = stmt.where(rv.seq < q.before_seq)
            stmt = stmt.order_by(rv.seq.desc())
        rows = [stored_from_row(r) for r in self.session.execute(stmt.limit(q.limit + 1)).scalars()]
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        if q.after_seq is not None:
            rows.reverse()
        return rows, more
