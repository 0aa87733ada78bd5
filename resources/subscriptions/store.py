"""The subscription tables: the only module that queries them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, insert, literal_column, or_, select, text, update
from sqlalchemy.orm import Session

from resources.subscriptions.models import (
    SubscriptionAttempt,
    SubscriptionChange,
    SubscriptionDelivery,
    SubscriptionState,
)

LIVE = ("active", "error")  # statuses whose subscriptions are matched and delivered

_STATE = SubscriptionState.__table__
_CHANGE = SubscriptionChange.__table__
_DELIVERY = SubscriptionDelivery.__table__
_ATTEMPT = SubscriptionAttempt.__table__

# The outbox row of a write, inserted only while some subscription watches the type: decided inside the
# write's own statement, so no process needs a cache of who is subscribed (and none can miss a change).
OUTBOX = insert(_CHANGE).from_select(
    ["res_type", "res_id", "version", "deleted", "created"],
    select(
        bindparam("c_type", type_=_CHANGE.c.res_type.type),
        bindparam("c_id", type_=_CHANGE.c.res_id.type),
        bindparam("c_version", type_=_CHANGE.c.version.type),
        bindparam("c_deleted", type_=_CHANGE.c.deleted.type),
        bindparam("c_created", type_=_CHANGE.c.created.type),
    ).where(
        # every status but off (requested, active, error), spelled as a literal: the statement runs
        # with the row's parameters only (a psycopg pipeline on PostgreSQL)
        exists().where(
            _STATE.c.criteria_type == bindparam("c_type"), _STATE.c.status != literal_column("'off'")
        )
    ),
)
INSERT_STATE = insert(_STATE)


def outbox_row(res_type: str, res_id: str, version: int, deleted: bool, when: datetime) -> dict[str, Any]:
    return {"c_type": res_type, "c_id": res_id, "c_version": version, "c_deleted": deleted, "c_created": when}


def state_update(sub_id: str, values: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """An UPDATE of one state row for a write batch (its own statement per column set)."""
    stmt = (
        update(_STATE)
        .where(_STATE.c.sub_id == bindparam("s_id"))
        .values(**{k: bindparam(f"v_{k}") for k in values})
    )
    return stmt, [{"s_id": sub_id, **{f"v_{k}": v for k, v in values.items()}}]


def get(session: Session, sub_id: str, *, lock: bool = False) -> SubscriptionState | None:
    stmt = select(SubscriptionState).where(SubscriptionState.sub_id == sub_id)
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def owned(owner: str, outer: Any) -> Any:
    """The condition that the Subscription ``outer`` (a Resource alias) was created by client ``owner``."""
    return exists().where(_STATE.c.sub_id == outer.res_id, _STATE.c.owner == owner)


# -- matching ----------------------------------------------------------------------------------------------
_DISPATCHER_LOCK = 0x5355_4253  # an arbitrary constant: the advisory lock of the one dispatcher


def dispatcher_lock(session: Session) -> bool:
    """Whether this transaction is the one dispatcher now (PostgreSQL: a transaction-scoped advisory lock,
    not waited for; SQLite: its single writer already is)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    got = session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _DISPATCHER_LOCK}).scalar()
    return bool(got)


_LEADER_LOCK = 0x5355_424C  # held for a process's life by the one whose worker matches (PostgreSQL)


class Leadership:
    """Whether this process's worker is the one that matches (PostgreSQL): a session-level advisory lock on
    a connection of its own, kept while the process lives and released by the server if it dies. Matching
    in one process instead of every process's poll keeps batches large, and a batch costs much the same
    whatever its size (planning a UNION of every subscription's criteria)."""

    RETRY = 2.0  # seconds between tries by a process that is not the leader

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.conn: Any = None
        self.next_try = 0.0

    def held(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        import time

        if self.conn is not None:
            try:
                self.conn.exec_driver_sql("SELECT 1")
                return True
            except Exception:
                self.release()
        if time.monotonic() < self.next_try:
            return False
        self.next_try = time.monotonic() + self.RETRY
        conn = self.engine.connect()
        try:
            got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_LEADER_LOCK})").scalar()
            conn.commit()
        except Exception:
            conn.close()
            return False
        if not got:
            conn.close()  # back to the pool: it holds no lock
            return False
        self.conn = conn
        return True

    def leads(self) -> bool:
        """Whether this process matched at its last try (SQLite: always, it serves one process)."""
        return self.engine.dialect.name != "postgresql" or self.conn is not None

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.invalidate()  # closed for real, not back to the pool: the session lock ends
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def changes(session: Session, limit: int) -> list[SubscriptionChange]:
    """The oldest changes (taken by the one dispatcher: see ``dispatcher_lock``)."""
    stmt = select(SubscriptionChange).order_by(SubscriptionChange.seq).limit(limit)
    return list(session.execute(stmt).scalars())


def forget_changes(session: Session, seqs: Sequence[int]) -> None:
    if seqs:
        session.execute(delete(_CHANGE).where(_CHANGE.c.seq.in_(seqs)))


def live(session: Session, res_types: Sequence[str]) -> list[SubscriptionState]:
    """Subscriptions that match changes of these types. Not locked: only the one dispatcher moves their
    event counters, and a client's write to one (which locks its resource, then this row) must not wait
    for a whole batch's matching."""
    stmt = (
        select(SubscriptionState)
        .where(SubscriptionState.criteria_type.in_(res_types), SubscriptionState.status.in_(LIVE))
        .order_by(SubscriptionState.sub_id)
    )
    return list(session.execute(stmt.execution_options(populate_existing=True)).scalars())


def notified_before(session: Session, sub_id: str, res_type: str, ids: Sequence[str]) -> set[str]:
    """Ids of these resources that the subscription has had an event about (a later deletion concerns it)."""
    if not ids:
        return set()
    d = SubscriptionDelivery
    stmt = (
        select(d.res_id)
        .where(d.sub_id == sub_id, d.res_type == res_type, d.res_id.in_(ids), d.status == "delivered")
        .distinct()
    )
    return set(session.execute(stmt).scalars())


def wake(session: Session, sub_ids: Sequence[str], now: datetime) -> None:
    """Make newly queued events due (in SQL: a deliverer may have just set ``due`` to NULL, and its row
    lock makes this wait and then see that)."""
    if sub_ids:
        session.execute(
            update(_STATE).where(_STATE.c.sub_id.in_(sub_ids)).values(due=func.coalesce(_STATE.c.due, now))
        )


def enqueue(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(_DELIVERY), rows)


# -- delivering --------------------------------------------------------------------------------------------
def claim(session: Session, owner: str, now: datetime, lease: timedelta, limit: int) -> list[str]:
    """Subscriptions with an event due, leased to ``owner`` (no other process sends for them meanwhile),
    earliest due first. One Core UPDATE ... RETURNING of the rows a locking subquery picks (PostgreSQL: SKIP
    LOCKED, so processes never wait on each other), built once per limit: every worker runs this each poll,
    and an idle server's polls should cost next to nothing."""
    stmt = _claim_statement(limit)
    taken = session.connection().execute(stmt, {"p_now": now, "p_owner": owner, "p_until": now + lease}).all()
    return [sub_id for sub_id, _ in sorted(taken, key=lambda row: (row[1], row[0]))]


@functools.cache
def _claim_statement(limit: int) -> Any:
    c = _STATE.c
    now = bindparam("p_now", type_=c.due.type)
    due = (
        select(c.sub_id)
        .where(
            c.status.in_(LIVE),
            c.due.is_not(None),
            c.due <= now,
            or_(c.lease_until.is_(None), c.lease_until < now),
        )
        .order_by(c.due)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (
        update(_STATE)
        .where(c.sub_id.in_(due.scalar_subquery()))
        .values(
            lease_owner=bindparam("p_owner", type_=c.lease_owner.type),
            lease_until=bindparam("p_until", type_=c.lease_until.type),
        )
        .returning(c.sub_id, c.due)
    )


def release(session: Session, sub_id: str, owner: str) -> None:
    session.execute(
        update(_STATE)
        .where(_STATE.c.sub_id == sub_id, _STATE.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


def head(session: Session, sub_id: str) -> SubscriptionDelivery | None:
    """The first pending event: later ones wait for it (per-subscription order)."""
    d = SubscriptionDelivery
    stmt = select(d).where(d.sub_id == sub_id, d.status == "pending").order_by(d.id).limit(1)
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def next_due(session: Session, sub_id: str) -> datetime | None:
    """When the subscription's first pending event may be tried (None: nothing pending)."""
    d = SubscriptionDelivery
    stmt = select(d.next_attempt).where(d.sub_id == sub_id, d.status == "pending").order_by(d.id).limit(1)
    return session.execute(stmt).scalar_one_or_none()


def add_attempt(
    session: Session, delivery_id: int, at: datetime, code: int | None, error: str | None, latency_ms: int
) -> None:
    session.execute(
        insert(_ATTEMPT),
        [{"delivery_id": delivery_id, "at": at, "code": code, "error": error, "latency_ms": latency_ms}],
    )


# -- the log and replay ------------------------------------------------------------------------------------
def events(
    session: Session, sub_id: str, *, since: int | None, until: int | None, limit: int
) -> list[SubscriptionDelivery]:
    d = SubscriptionDelivery
    stmt = select(d).where(d.sub_id == sub_id)
    if since is not None:
        stmt = stmt.where(d.event_number >= since)
    if until is not None:
        stmt = stmt.where(d.event_number <= until)
    return list(session.execute(stmt.order_by(d.event_number, d.id).limit(limit)).scalars())


def attempts(session: Session, delivery_ids: Sequence[int]) -> dict[int, list[SubscriptionAttempt]]:
    out: dict[int, list[SubscriptionAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        a = SubscriptionAttempt
        stmt = select(a).where(a.delivery_id.in_(delivery_ids)).order_by(a.delivery_id, a.id)
        for row in session.execute(stmt).scalars():
            out[row.delivery_id].append(row)
    return out


def originals(
    session: Session, sub_id: str, *, number: int | None, since: datetime | None, limit: int
) -> list[SubscriptionDelivery]:
    """The first delivery of each event to replay: one event by number, or every event since a time."""
    d = SubscriptionDelivery
    stmt = select(d).where(d.sub_id == sub_id, d.replay.is_(False))
    if number is not None:
        stmt = stmt.where(d.event_number == number)
    if since is not None:
        stmt = stmt.where(d.created >= since)
    return list(session.execute(stmt.order_by(d.event_number).limit(limit)).scalars())


def pending_replays(session: Session, sub_id: str) -> bool:
    d = SubscriptionDelivery
    stmt = select(d.id).where(d.sub_id == sub_id, d.status == "pending", d.replay.is_(True)).limit(1)
    return session.execute(stmt).first() is not None


def owned_count(session: Session, owner: str) -> int:
    s = SubscriptionState
    stmt = select(func.count()).select_from(s).where(s.owner == owner, s.status != "off")
    return int(session.execute(stmt).scalar_one())


def counts(session: Session, sub_id: str) -> dict[str, int]:
    d = SubscriptionDelivery
    stmt = select(d.status, func.count()).where(d.sub_id == sub_id).group_by(d.status)
    return {status: int(n) for status, n in session.execute(stmt)}


def overview(session: Session) -> list[tuple[Any, ...]]:
    """(id, owner, status, pending events, failures, criteria, error) of every subscription, by id."""
    s, d = SubscriptionState, SubscriptionDelivery
    pending = (
        select(func.count()).where(d.sub_id == s.sub_id, d.status == "pending").correlate(s).scalar_subquery()
    )
    stmt = select(
        s.sub_id, s.owner, s.status, pending, s.failures, s.criteria_type + "?" + s.criteria, s.error
    ).order_by(s.sub_id)
    return [tuple(row) for row in session.execute(stmt)]
