"""Database engine and request-scoped sessions (SQLAlchemy 2) for SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import math
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask, current_app, g, has_request_context
from psycopg import pq
from psycopg.adapt import Transformer
from sqlalchemy import (
    Connection,
    DateTime,
    Delete,
    Engine,
    Insert,
    Update,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

WRITE = {"fhir_write": True}
"""Execution option that marks a transaction as a writer (SQLite then takes the write lock up front)."""


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL for concurrent readers; explicit BEGIN so writers take the lock at start and never deadlock."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA case_sensitive_like=ON")  # LIKE as on PostgreSQL (values are pre-normalised)
        cur.execute("PRAGMA analysis_limit=1000")  # bounded ANALYZE work for PRAGMA optimize
        cur.close()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, _record: Any) -> None:
        # Keeps planner statistics in step with table sizes: stale ones (taken when a table was tiny) make
        # SQLite pick plans that are orders of magnitude slower. Cheap when nothing changed; best effort
        # (it may need the write lock, and a busy database must not fail the request that returns here).
        with suppress(sqlite3.OperationalError):
            dbapi_conn.execute("PRAGMA optimize")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("fhir_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, config: dict[str, Any] | None = None) -> Engine:
    config = config or {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=config.get("DB_ECHO", False),
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool if parsed.database in (None, "", ":memory:") else None,
        )
        _sqlite_pragmas(engine)
        return engine
    engine = create_engine(
        url,
        echo=config.get("DB_ECHO", False),
        pool_size=int(config.get("DB_POOL_SIZE", 5)),
        max_overflow=int(config.get("DB_MAX_OVERFLOW", 10)),
        pool_recycle=int(config.get("DB_POOL_RECYCLE", 1800)),
        pool_pre_ping=False,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # psycopg would prepare any statement run 5 times, and PostgreSQL may then give it a generic plan,
        # without the constants that make search predicates (LIKE prefixes, selective codes) use their
        # indexes. Only what asks to be is prepared (``fetch_one``: the read by primary key, whose generic
        # plan is the custom one without ~40 us of planning per read); every other statement is planned
        # with its values each time. (None would disable ``prepare=True`` too.)
        dbapi_conn.prepare_threshold = _NEVER_AUTOMATICALLY

    return engine


_NEVER_AUTOMATICALLY = 2**62  # executions of one statement before psycopg prepares it on its own


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"], app.config)
    app.extensions["fhir_db"] = {
        "engine": engine,
        "sessions": sessionmaker(engine, expire_on_commit=False),
        "lean": _HeldConnections(engine, float(app.config.get("DB_POOL_RECYCLE", 1800))),
    }

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None and (session.in_transaction() or session.identity_map):
            session.close()  # (one that never began holds nothing: a read served on the lean connection)
        lean = g.pop(_LEAN, None)
        if lean is not None:
            current_app.extensions["fhir_db"]["lean"].release(lean)


def dispose(app: Flask) -> None:
    """Close an app's pooled connections (command-line work done with an app of its own)."""
    app.extensions["fhir_db"]["engine"].dispose()


def on_dispose(engine: Engine, stop: Callable[[], None]) -> None:
    """Call ``stop`` when ``engine``'s pool is closed: a background thread of the app (chainer, export
    runner, subscription worker, revocation listener) must not go on polling a database that may be gone
    (a finished command's app, a test's, a bench's)."""
    event.listen(engine, "engine_disposed", lambda _conn: stop())


def engine() -> Engine:
    return current_app.extensions["fhir_db"]["engine"]


def session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["fhir_db"]["sessions"]()
    return g.db_session


_LEAN = "db_lean"


def lean_connection(s: Session) -> Any | None:
    """PostgreSQL: the serving thread's own psycopg connection in autocommit, for the work of a request
    whose Session (``s``) has begun no transaction: the read by id (one statement, which needs no BEGIN of
    its own), the audit record of a request that only read, and a write that is one batch (``BEGIN ...
    COMMIT`` in one query). On the hottest paths of the server this saves a round trip and ~250 us of CPU
    per request: the Session's and Connection's begin, commit and close machinery, and the pool's checkout
    and return. None on SQLite, outside a request, for any other session, and once ``s`` has begun a
    transaction (what follows must run in it). Under PostgreSQL's READ COMMITTED each statement sees its
    own snapshot either way, so a read here sees what it would in the Session."""
    if not has_request_context() or g.get("db_session") is not s or s.in_transaction():
        return None
    lean = g.get(_LEAN)
    if lean is None:
        state = current_app.extensions["fhir_db"]
        if state["engine"].dialect.name != "postgresql":
            return None
        lean = state["lean"].get()
        g.setdefault(_LEAN, lean)
    return lean


class _HeldConnections:
    """Each serving thread's lean connection, kept checked out of the pool from one request to the next (a
    checkout and return cost ~40 us of every request), in autocommit. A broken one, or one older than the
    pool's recycle time, is replaced; all are closed when the engine's pool is disposed. They count among
    the pool's checked-out connections (at most one per serving thread)."""

    def __init__(self, engine: Engine, recycle: float) -> None:
        self.engine = engine
        self.recycle = recycle if recycle > 0 else math.inf
        self.local = threading.local()
        self.held: set[Any] = set()
        self.lock = threading.Lock()
        on_dispose(engine, self.close_all)

    def get(self) -> Any:
        lean = getattr(self.local, "conn", None)
        if lean is not None:
            raw = lean.driver_connection
            stale = time.monotonic() - self.local.since > self.recycle
            if stale or raw is None or raw.closed or raw.pgconn.status != pq.ConnStatus.OK:
                self._drop(lean)
                lean = None
        if lean is None:
            lean = self.engine.raw_connection()
            try:
                lean.driver_connection.autocommit = True
            except BaseException:
                lean.close()
                raise
            with self.lock:
                keep = len(self.held) < self.limit
                if keep:
                    self.held.add(lean)
            if keep:
                self.local.conn, self.local.since = lean, time.monotonic()
        return lean

    @property
    def limit(self) -> int:
        """Held connections at most: the pool's size (more serving threads than that borrow theirs per
        request, so the Session's work always finds connections left in the pool)."""
        size = getattr(self.engine.pool, "size", None)
        return int(size()) if callable(size) else 0

    def release(self, lean: Any) -> None:
        """At the end of a request: idle again (a failed statement's transaction rolled back), else
        dropped; one this thread does not keep goes back to the pool as the pool hands them out."""
        try:
            raw = lean.driver_connection
            if raw.pgconn.transaction_status != _IDLE:
                raw.rollback()
            if getattr(self.local, "conn", None) is not lean:
                raw.autocommit = False
                lean.close()
        except Exception:
            self._drop(lean)

    def _drop(self, lean: Any) -> None:
        if getattr(self.local, "conn", None) is lean:
            self.local.conn = None
        with self.lock:
            self.held.discard(lean)
        with suppress(Exception):
            lean.invalidate()  # closes the driver connection
        with suppress(Exception):
            lean.close()  # and hands the (invalidated) slot back to its pool

    def close_all(self) -> None:
        with self.lock:
            held, self.held = list(self.held), set()
        for lean in held:
            with suppress(Exception):
                lean.invalidate()
            with suppress(Exception):
                lean.close()


@contextmanager
def new_session() -> Iterator[Session]:
    """A session outside a request (CLI, seeding, background work)."""
    s = current_app.extensions["fhir_db"]["sessions"]()
    try:
        yield s
    finally:
        s.close()


def now() -> datetime:
    """Server time at millisecond precision, the precision written into meta.lastUpdated."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def format_instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def write_transaction(s: Session, *, single_batch: bool = False) -> Iterator[Session]:
    """One writer transaction: commits on success, rolls back on any error (nothing half-written).

    ``single_batch``: the caller's one ``execute_batch`` is the transaction's last statement, so on
    PostgreSQL its COMMIT travels in the same round trip (the commit here then finds nothing left to do).
    In a request, on PostgreSQL, the Session does not even begin: the batch goes as ``BEGIN; ...; COMMIT``
    on the request's ``lean_connection``, unless something inside queried through the Session first (the
    batch then joins that transaction, as it would have anyway).
    """
    if s.in_transaction():
        s.commit()  # end a read-only transaction opened earlier in the request
    if single_batch and lean_connection(s) is not None:
        s.info[_COMMIT_WITH_BATCH] = _ON_LEAN
        try:
            yield s
        except BaseException:
            if s.in_transaction():
                s.rollback()
            raise
        else:
            if s.in_transaction():
                s.commit()
        finally:
            s.info.pop(_COMMIT_WITH_BATCH, None)
        return
    with s.begin():
        s.connection(execution_options=WRITE)
        s.info[_COMMIT_WITH_BATCH] = single_batch
        try:
            yield s
        finally:
            s.info.pop(_COMMIT_WITH_BATCH, None)


_COMMIT_WITH_BATCH = "fhir_commit_with_batch"
_ON_LEAN = "lean"  # the single batch may go on the request's lean connection
_NO_FLUSH = text("SET LOCAL synchronous_commit TO off")
Batch = list[tuple[Any, list[dict[str, Any]]]]  # (Core DML statement, parameter rows)


def commit_batch(s: Session, batch: Batch, *, flush: bool = True) -> None:
    """Run ``batch`` and commit, in one round trip on PostgreSQL (continuing the request's transaction).

    ``flush=False``: on PostgreSQL the commit does not wait for its WAL flush (``synchronous_commit`` off
    for this transaction only): visible to every session at once, durable within ~3 x ``wal_writer_delay``
    (0.6 s by default) unless the database server crashes first. SQLite first ends any read transaction and
    takes the write lock: a read snapshot upgraded to a writer fails when another connection committed since
    it began.
    """
    postgresql = s.get_bind().dialect.name == "postgresql"
    if postgresql and not flush:
        batch = [(_NO_FLUSH, [{}]), *batch]
    lean = lean_connection(s) if postgresql else None
    if lean is not None and _commit_lean(lean, batch):
        return
    if postgresql and s.in_transaction():
        s.info[_COMMIT_WITH_BATCH] = True
        try:
            execute_batch(s, batch)
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.info.pop(_COMMIT_WITH_BATCH, None)
        return
    with write_transaction(s, single_batch=True):
        execute_batch(s, batch)


def _commit_lean(lean: Any, batch: Batch) -> bool:
    """``batch`` as a transaction of its own on the request's lean connection: ``BEGIN; ...; COMMIT`` in one
    query. False, having sent nothing, when it cannot go as text (the Session's path then runs it)."""
    raw = lean.driver_connection
    try:
        return _execute_as_text(raw, engine().dialect, lean.invalidate, batch, begin=True, commit=True)
    except BaseException:
        with suppress(Exception):
            if not raw.closed:
                raw.rollback()  # the failed transaction, so the connection can serve the rest of the request
        raise


def execute_batch(s: Session, batch: Batch) -> None:
    """Run several DML statements in the session's transaction with as few round trips as possible.

    On PostgreSQL they go in a single round trip for the whole write (a resource version and its dozens of
    index rows): as one query of quoted literals when every value is a plain one (``_execute_as_text``),
    else through one psycopg pipeline; elsewhere through ordinary executemany. Parameters must be plain
    driver values (str, int, float, bool, aware datetime, lists of ints): no SQLAlchemy type processing
    happens on either PostgreSQL path.
    """
    commit = s.info.get(_COMMIT_WITH_BATCH)
    if commit is None and _COMMIT_WITH_BATCH in s.info:
        raise RuntimeError("this write transaction was already committed with its single batch")
    if commit:
        s.info[_COMMIT_WITH_BATCH] = None  # a second batch would run outside the committed transaction
    if commit == _ON_LEAN:
        lean = lean_connection(s)
        if lean is not None and _commit_lean(lean, batch):
            return
    begun = s.in_transaction() or commit != _ON_LEAN
    conn = s.connection() if begun else s.connection(execution_options=WRITE)
    if conn.dialect.name != "postgresql":
        for stmt, rows in batch:
            if rows:
                conn.execute(stmt, rows)
        return
    raw = conn.connection.dbapi_connection
    begin = raw.pgconn.transaction_status == _IDLE and not raw.autocommit  # as psycopg itself would
    if _execute_as_text(raw, conn.dialect, conn.invalidate, batch, begin=begin, commit=bool(commit)):
        return

    try:
        with raw.pipeline(), raw.cursor() as cur:  # type: ignore[union-attr]
            for stmt, rows in batch:
                if not rows:
                    continue
                first = rows[0]
                if len(rows) == 1:
                    cur.execute(_pg_sql(stmt, conn.dialect, tuple(first)), first)
                    continue
                same = tuple(k for k, v in first.items() if all(r[k] == v for r in rows))
                varying = tuple(k for k in first if k not in same)
                if varying and isinstance(stmt, Insert):
                    params = [first[k] for k in same] + [[r[k] for r in rows] for k in varying]
                    cur.execute(_pg_unnest_insert(stmt, conn.dialect, same, varying), params)
                else:
                    cur.executemany(_pg_sql(stmt, conn.dialect, tuple(first)), rows)
            if commit:
                cur.execute("COMMIT")
    except psycopg.errors.IntegrityError as exc:
        from sqlalchemy.exc import IntegrityError

        raise IntegrityError(str(exc.diag.message_primary), None, exc) from exc


_PG_SQL: dict[tuple[Any, ...], str] = {}
_IDLE = pq.TransactionStatus.IDLE
_TEXT_LIMIT = 64 * 1024  # characters of quoted values above which the pipeline (bound parameters) is used


def _execute_as_text(
    raw: Any,
    dialect: Any,
    invalidate: Callable[[], None],
    batch: Batch,
    *,
    begin: bool,
    commit: bool,
    retry: bool = True,
) -> bool:
    """PostgreSQL: a batch (and its COMMIT) as one simple-protocol query whose values are literals quoted by
    libpq (``PQescapeLiteral``) in the statements' own ``%(name)s`` placeholders. One round trip like the
    pipeline, at a fraction of its client CPU: binding, preparing and syncing each statement is most of what
    the pipeline costs in Python (an audit record of a read, a resource version with its index rows). Plain
    INSERTs become one ``VALUES`` list each; a statement with one row runs as ``EXECUTE`` of a statement
    prepared once per connection (``_executable``). Returns False, having sent nothing, when a value is not a
    plain str/int/float/bool/None/aware datetime/list of ints, or the text would be large; ``execute_batch``
    then uses the pipeline."""
    pgconn = raw.pgconn
    escape = pq.Escaping(pgconn)
    encoding = _encoding(raw)
    prepared = _PREPARED.setdefault(raw, set())
    idle = pgconn.transaction_status == _IDLE  # a failed PREPARE would abort a transaction in progress
    parts: list[str] = []
    size = 0
    for stmt, rows in batch:
        if not rows:
            continue
        keys = tuple(rows[0])
        tuples: list[str] = []  # each row's quoted values, as "(v1,v2,...)"
        for row in rows:
            if len(row) != len(keys) or tuple(row) != keys:
                return False
            quoted = [_literal(v, escape, encoding) for v in row.values()]
            if None in quoted:
                return False
            line = "(" + ",".join(quoted) + ")"  # type: ignore[arg-type]
            size += len(line)
            tuples.append(line)
        if size > _TEXT_LIMIT:
            return False
        if len(rows) <= _PREPARED_ROWS:
            named = _executable(stmt, dialect, keys, len(rows))
            if named is not None and (
                named[0] in prepared or (idle and _prepare(raw, named, prepared, invalidate))
            ):
                args = tuples[0] if len(tuples) == 1 else "(" + ",".join(t[1:-1] for t in tuples) + ")"
                parts.append(named[2] + args)
                continue
        plain = _PG_SQL.get(("values", stmt, keys))
        if plain is None:
            plain = _plain_insert(stmt, dialect, keys) if isinstance(stmt, Insert) else ""
            _PG_SQL[("values", stmt, keys)] = plain
        if plain:  # one INSERT ... VALUES (...), (...) for all the rows
            parts.append(plain + ",".join(tuples))
        else:  # an UPDATE, a DELETE, an INSERT ... SELECT: its own placeholders, one statement per row
            sql = _pg_sql(stmt, dialect, keys)
            parts += [sql % {k: _literal(v, escape, encoding) for k, v in row.items()} for row in rows]
    if commit:
        parts.append("COMMIT")
    if not parts:
        return True
    if begin:
        parts.insert(0, "BEGIN")
    nonblocking = pgconn.nonblocking
    pgconn.nonblocking = 0  # PQexec blocks (with the GIL released) until the last statement has answered
    try:
        result = pgconn.exec_(";".join(parts).encode(encoding))
        gone = result.status not in _OK and result.error_field(_SQLSTATE) == _NO_STATEMENT
        if gone:  # something dropped this connection's prepared statements (DISCARD ALL, a pooler)
            prepared.clear()
            if begin and retry and pgconn.status == pq.ConnStatus.OK:  # nothing was written: run it again
                pgconn.exec_(b"ROLLBACK")
    finally:
        pgconn.nonblocking = nonblocking
    if gone and begin and retry and pgconn.transaction_status == _IDLE:
        return _execute_as_text(raw, dialect, invalidate, batch, begin=begin, commit=commit, retry=False)
    try:
        _check(result, pgconn, invalidate)
    except psycopg.errors.IntegrityError as error:
        from sqlalchemy.exc import IntegrityError

        raise IntegrityError(str(error), None, error) from None
    return True


def _executable(stmt: Any, dialect: Any, keys: tuple[str, ...], rows: int) -> _Executable | None:
    """(name, SQL with $n parameters, ``EXECUTE name``, cache key) for a DML statement run with one row, or
    a plain INSERT with a few, or None.

    PostgreSQL parses, analyses and plans every statement of a simple query; a prepared statement's plan is
    kept. For a resource version with its index rows, audit event and link and change-feed row, that is
    about a third of the server's CPU per create (~140 of ~480 us measured here), and most of a read's
    audit record. Each row count of an INSERT is a statement of its own, hence the cap on rows."""
    cache_key = (stmt, keys, rows)
    found = _EXECUTABLE.get(cache_key, _UNSEEN)
    if found is _UNSEEN:
        sql = None
        if rows == 1 and keys and isinstance(stmt, Insert | Update | Delete):
            sql = _numbered(stmt, dialect, keys)
        elif rows > 1 and isinstance(stmt, Insert) and _plain_insert(stmt, dialect, keys):
            width = len(keys)
            values = (",".join(f"${r * width + c}" for c in range(1, width + 1)) for r in range(rows))
            sql = (_plain_insert(stmt, dialect, keys) + ",".join(f"({v})" for v in values)).encode()
        found = None
        if sql is not None:
            name = f"fhir_{next(_STATEMENT_NUMBERS)}"
            found = (name.encode(), sql, f"EXECUTE {name}", cache_key)
        _EXECUTABLE[cache_key] = found
    return found  # type: ignore[return-value]


def _prepare(raw: Any, named: _Executable, prepared: set[bytes], invalidate: Callable[[], None]) -> bool:
    """Prepare ``named`` on an idle connection; a statement PostgreSQL cannot prepare (a parameter whose type
    it cannot infer) is never tried again and runs as text."""
    pgconn = raw.pgconn
    nonblocking = pgconn.nonblocking
    pgconn.nonblocking = 0
    try:
        result = pgconn.prepare(named[0], named[1])
    finally:
        pgconn.nonblocking = nonblocking
    if result.status in _OK:
        prepared.add(named[0])
        return True
    if pgconn.status != pq.ConnStatus.OK:
        _check(result, pgconn, invalidate)  # raises: the connection is gone
    _EXECUTABLE[named[3]] = None
    return False


def _plain_insert(stmt: Insert, dialect: Any, keys: tuple[str, ...]) -> str:
    """``INSERT INTO t (keys) VALUES `` when ``stmt`` is a bare ``insert(t)`` of those columns, else ''."""
    table = stmt.table
    if stmt.select is not None or not all(k in table.c for k in keys):  # type: ignore[attr-defined]
        return ""  # INSERT ... SELECT, or parameters named otherwise than columns
    if _pg_sql(stmt, dialect, keys) != _pg_sql(insert(table), dialect, keys):  # type: ignore[arg-type]
        return ""  # values of its own
    prep = dialect.identifier_preparer
    columns = ", ".join(prep.quote(k) for k in keys)
    return f"INSERT INTO {prep.format_table(table)} ({columns}) VALUES "  # type: ignore[arg-type]


def _literal(value: Any, escape: Any, encoding: str) -> str | None:
    """An SQL literal for a plain driver value (None when the type is not one of them)."""
    kind = type(value)  # the common exact types first: dozens of values per write
    if kind is int:
        return str(value)
    if kind is str and "'" not in value and "\\" not in value and "\x00" not in value:
        return "'" + value + "'"  # what PQescapeLiteral returns for it, without the round of copies
    if value is None:
        return "NULL"
    if isinstance(value, str):
        if "\x00" in value:
            return None  # a C string would end there: the pipeline refuses it as PostgreSQL does
        return escape.escape_literal(value.encode(encoding)).decode(encoding)  # type: ignore[no-any-return]
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"'{value!r}'" if math.isfinite(value) else None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return f"'{value.isoformat()}'"
    if isinstance(value, list) and all(type(v) is int for v in value):
        return "'{" + ",".join(map(str, value)) + "}'"
    return None


def _pg_unnest_insert(stmt: Insert, dialect: Any, same: tuple[str, ...], varying: tuple[str, ...]) -> str:
    """``INSERT ... SELECT FROM unnest(array per column)``: many rows in one statement of a fixed shape.

    One execution instead of one per row: PostgreSQL plans and starts the executor once, which is most of
    its cost for small rows, and the statement text does not vary with the row count (so it is prepared).
    Columns equal in every row (the resource's type and id) are sent once, as scalars.
    """
    cache_key = ("unnest", stmt, same, varying)
    sql = _PG_SQL.get(cache_key)
    if sql is None:
        table = stmt.table

        def typed(k: str, suffix: str = "") -> str:
            return f"%s::{table.c[k].type.compile(dialect=dialect)}{suffix}"

        columns = ", ".join(dialect.identifier_preparer.quote(k) for k in same + varying)
        scalars = "".join(typed(k) + ", " for k in same)
        arrays = ", ".join(typed(k, "[]") for k in varying)
        name = dialect.identifier_preparer.format_table(table)
        sql = f"INSERT INTO {name} ({columns}) SELECT {scalars}u.* FROM unnest({arrays}) AS u"
        _PG_SQL[cache_key] = sql
    return sql


def fetch_one(conn: Connection | Session, stmt: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The one row (or None) of a Core SELECT built once at import (its SQL is cached by the statement
    object: never pass one built per call), e.g. a read by primary key.

    On PostgreSQL it goes straight through psycopg, prepared on the connection, and each value gets the
    processing Core would give it (``UTCDateTime``): Core's execution machinery costs ~90 us of CPU per call
    here against ~50 us for psycopg alone, on the hottest path of the server. Given the request's Session
    before it has begun a transaction, it runs on the request's ``lean_connection`` (no BEGIN, no Session
    machinery). A dropped connection is invalidated, as Core would, so the pool never hands it out again.
    Elsewhere Core runs it."""
    if isinstance(conn, Session):
        lean = lean_connection(conn)
        if lean is not None:
            return _pg_fetch_one(lean.driver_connection, lean.invalidate, engine().dialect, stmt, params)
        conn = conn.connection()
    if conn.dialect.name != "postgresql":
        row = conn.execute(stmt, params).one_or_none()
        return tuple(row) if row is not None else None
    return _pg_fetch_one(conn.connection.dbapi_connection, conn.invalidate, conn.dialect, stmt, params)


def _pg_fetch_one(
    raw: Any, invalidate: Callable[[], None], dialect: Any, stmt: Any, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """Through libpq itself: a statement prepared once per connection (``PQexecPrepared``, text parameters),
    its row loaded by psycopg's own loaders. psycopg's cursor (its query conversion and prepared-statement
    bookkeeping on every call) cost more than the round trip's client work. Parameters must be strings."""
    keys = tuple(params)
    compiled = _PG_SELECT.get((stmt, keys))
    if compiled is None:
        each = (c.type.result_processor(dialect, None) for c in stmt.selected_columns)
        processors = tuple((i, f) for i, f in enumerate(each) if f is not None)
        name = f"fhir_{next(_STATEMENT_NUMBERS)}".encode()
        compiled = (name, _numbered(stmt, dialect, keys), processors)
        _PG_SELECT[(stmt, keys)] = compiled
    name, sql, processors = compiled
    values = [params[k].encode(_encoding(raw)) for k in keys]
    pgconn = raw.pgconn
    prepared = _PREPARED.setdefault(raw, set())
    nonblocking = pgconn.nonblocking
    pgconn.nonblocking = 0  # the calls below block (with the GIL released) until the server answers
    try:
        for attempt in (1, 2):
            if name not in prepared:
                _check(pgconn.prepare(name, sql), pgconn, invalidate)
                prepared.add(name)
            result = pgconn.exec_prepared(name, values)
            gone = result.error_field(_SQLSTATE) == _NO_STATEMENT  # DISCARD, a pooler
            if gone:
                prepared.discard(name)
            if not gone or attempt == 2:
                _check(result, pgconn, invalidate)
                break
    finally:
        pgconn.nonblocking = nonblocking
    if result.ntuples == 0:
        return None
    if result.ntuples > 1:
        from sqlalchemy.exc import MultipleResultsFound

        raise MultipleResultsFound("Multiple rows were found when one or none was required")
    loader = Transformer(raw)
    loader.set_pgresult(result)
    row = loader.load_row(0, tuple)
    if not processors:
        return row  # type: ignore[no-any-return]
    values = list(row)
    for i, process in processors:
        if values[i] is not None:
            values[i] = process(values[i])
    return tuple(values)


def _check(result: Any, pgconn: Any, invalidate: Callable[[], None]) -> None:
    """Raise what psycopg would for a failed libpq result; a lost connection is invalidated first."""
    if result.status in _OK:
        return
    message = (result.error_message or pgconn.error_message).decode("utf-8", "replace").strip()
    if pgconn.status != pq.ConnStatus.OK:
        invalidate()  # the pool must not hand out a broken connection again
        raise psycopg.OperationalError(message or "the connection to the database was lost")
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    raise psycopg.errors.lookup(sqlstate)(message) if sqlstate else psycopg.DatabaseError(message)


_PREPARED: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
"""The statements ``_pg_fetch_one`` has prepared on each psycopg connection."""
_ENCODINGS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_OK = (int(pq.ExecStatus.COMMAND_OK), int(pq.ExecStatus.TUPLES_OK))


def _encoding(raw: Any) -> str:
    """The connection's client encoding as a Python codec name (asked of libpq once per connection)."""
    found = _ENCODINGS.get(raw)
    if found is None:
        found = _ENCODINGS[raw] = raw.info.encoding
    return found


_PG_SELECT: dict[tuple[Any, ...], tuple[bytes, bytes, tuple[Any, ...]]] = {}
_Executable = tuple[bytes, bytes, str, tuple[Any, ...]]
_EXECUTABLE: dict[tuple[Any, ...], _Executable | None] = {}
# Rows up to which an INSERT of a batch is prepared, one statement per row count. Each keeps its plan in
# the server process of every connection (~50 kB at 2-4 rows, ~200 kB at 16, measured): with a dozen index
# tables and a few dozen connections a higher cap would hold hundreds of MB of server memory.
_PREPARED_ROWS = 4
_UNSEEN = object()
_STATEMENT_NUMBERS = itertools.count()  # names of the statements prepared on every connection
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_NO_STATEMENT = b"26000"  # invalid_sql_statement_name: the prepared statement does not exist


def _numbered(stmt: Any, dialect: Any, keys: tuple[str, ...]) -> bytes:
    """The statement's SQL with ``$1``, ``$2``... in place of its ``%(key)s`` placeholders, for PREPARE."""
    numbered = _pg_sql(stmt, dialect, keys)
    for n, key in enumerate(keys, 1):
        numbered = numbered.replace(f"%({key})s", f"${n}")
    return numbered.replace("%%", "%").encode()


def _pg_sql(stmt: Any, dialect: Any, keys: tuple[str, ...]) -> str:
    """Compile once per statement shape to psycopg's %(name)s form."""
    cache_key = (stmt, keys)
    sql = _PG_SQL.get(cache_key)
    if sql is None:
        sql = str(stmt.compile(dialect=dialect, column_keys=list(keys)))
        _PG_SQL[cache_key] = sql
    return sql


def analyze(e: Engine) -> None:
    """Refresh planner statistics after a bulk load (seed, reindex, import): without them both databases
    plan index lookups as if every table were tiny, and searches slow down by orders of magnitude."""
    with e.begin() as conn:
        conn.exec_driver_sql("ANALYZE" if e.dialect.name == "postgresql" else "PRAGMA optimize")


def read_ahead(partitions: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """The items of ``partitions`` (pages of a streamed result) fetched by a helper thread up to ``depth``
    ahead, so that the database produces the next page while the caller works on this one (``audit
    verify``: PostgreSQL joining and sending rows on one core while Python hashes them on the other). The
    helper is the only one to touch the result until it is exhausted; an error there is raised here."""
    pages: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def hand_over(item: Any) -> bool:
        """Queue ``item`` unless the reader has gone (then a full queue would block for ever)."""
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for page in partitions:
                if not hand_over(page):
                    return
            hand_over(done)
        except BaseException as exc:  # handed over to the reading thread
            hand_over(exc)

    helper = threading.Thread(target=fetch, name="read-ahead", daemon=True)
    helper.start()
    try:
        while (page := pages.get()) is not done:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        stop.set()
        helper.join()
