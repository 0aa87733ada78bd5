"""The write path's batching: several rows in one statement, and a single batch that carries its COMMIT."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest
from flask import g
from sqlalchemy import bindparam, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError, MultipleResultsFound

from audit.models import AuditLink
from fhir_api import db
from resources.models import Resource, ResourceVersion
from resources.repository import _COLUMNS, _READ_CURRENT
from resources.search.models import NumberIndex, TokenIndex


def _rows(n: int, res_id: str = "r1") -> list[dict]:
    return [
        {"res_type": "Patient", "res_id": res_id, "param": "identifier", "system": "s", "code": f"c{i}"}
        for i in range(n)
    ]


def _count(app) -> int:
    with app.app_context(), db.new_session() as s:
        return s.execute(select(func.count()).select_from(TokenIndex)).scalar_one()


def test_many_rows_with_shared_and_null_columns_are_all_written(app):
    rows = [*_rows(30), {**_rows(1, "r2")[0], "system": None}]
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        db.execute_batch(s, [(insert(TokenIndex.__table__), rows)])
    with app.app_context(), db.new_session() as s:
        got = s.execute(select(TokenIndex.res_id, TokenIndex.system, TokenIndex.code)).all()
    assert sorted(got, key=str) == sorted([(r["res_id"], r["system"], r["code"]) for r in rows], key=str)


def test_single_batch_transaction_commits_with_its_batch(app):
    with app.app_context(), db.new_session() as s, db.write_transaction(s, single_batch=True):
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(3))])
    assert _count(app) == 3


def test_a_second_batch_in_a_single_batch_transaction_is_refused_and_nothing_is_written(app):
    with app.app_context(), db.new_session() as s:
        dialect = s.connection().dialect.name
        refused = pytest.raises(RuntimeError, match="already committed")
        with refused, db.write_transaction(s, single_batch=True):
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2, "r2"))])
    # PostgreSQL committed with the first batch; SQLite commits at the end and so rolled back: either way
    # the refused second batch wrote nothing
    assert _count(app) == (2 if dialect == "postgresql" else 0)


def test_ordinary_transaction_takes_several_batches(app):
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2, "r2"))])
    assert _count(app) == 4


# -- commit_batch: a batch that ends the request's transaction (audit records of reads) ----------------------
_AWKWARD = ["it's", "back\\slash", "$$ dollar $$", "semi; COMMIT; DROP TABLE x", "new\nline", "ünïcödé ✓ 🩺"]


def _link_rows(event_id: str, when: datetime) -> list[dict]:
    return [{"event_id": event_id, "kind": "entity", "ref": ref, "recorded": when} for ref in _AWKWARD]


def _links(app, event_id: str) -> list[tuple[str, datetime]]:
    with app.app_context(), db.new_session() as s:
        rows = s.execute(select(AuditLink.ref, AuditLink.recorded).where(AuditLink.event_id == event_id))
        return sorted(rows.all())


def test_commit_batch_stores_every_value_exactly(app, monkeypatch):
    """Quotes, backslashes, dollar quotes, statement separators, newlines and non-ASCII text, and a datetime
    to the microsecond, come back as they were sent. On PostgreSQL they travel as quoted literals in one
    query: the pipeline must not have been used."""
    when = datetime(2026, 11, 24, 23, 59, 58, 123456, tzinfo=UTC)
    with app.app_context(), db.new_session() as s:
        if s.connection().dialect.name == "postgresql":
            import psycopg

            monkeypatch.setattr(psycopg.Connection, "pipeline", _not_called)
        s.execute(select(func.count()).select_from(AuditLink))  # the read that opens the transaction
        db.commit_batch(s, [(insert(AuditLink.__table__), _link_rows("ev-exact", when))])
        assert not s.in_transaction()
    assert _links(app, "ev-exact") == sorted((ref, when) for ref in _AWKWARD)


def test_commit_batch_that_fails_writes_nothing_and_raises_integrity_error(app):
    when = datetime(2026, 11, 24, tzinfo=UTC)
    rows = _link_rows("ev-twice", when)
    with app.app_context(), db.new_session() as s:
        before = s.execute(select(func.count()).select_from(AuditLink)).scalar_one()
        with pytest.raises(IntegrityError):
            db.commit_batch(s, [(insert(AuditLink.__table__), [*rows, rows[0]])])  # a duplicate key
        assert s.execute(select(func.count()).select_from(AuditLink)).scalar_one() == before  # still usable
    assert _links(app, "ev-twice") == []


def test_a_batch_with_a_value_a_literal_cannot_carry_goes_through_the_pipeline(app, monkeypatch):
    """A non-finite float (as bytes or a list of strings would be) is not rendered as a literal: the
    bound-parameter pipeline takes the whole batch, and every row is written."""
    used = []
    real = db._execute_as_text
    monkeypatch.setattr(db, "_execute_as_text", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    numbers = [{"res_type": "Observation", "res_id": "o1", "param": "value-quantity", "value": float("inf")}]
    batch = [(insert(TokenIndex.__table__), _rows(2)), (insert(NumberIndex.__table__), numbers)]
    with app.app_context(), db.new_session() as s:
        postgres = s.connection().dialect.name == "postgresql"
        s.execute(select(func.count()).select_from(TokenIndex))
        db.commit_batch(s, batch)
    assert _count(app) == 2
    with app.app_context(), db.new_session() as s:
        assert s.execute(select(NumberIndex.value)).scalars().all() == [float("inf")]
    assert used == [False] or not postgres


def _not_called(*_args, **_kwargs):
    raise AssertionError("the pipeline was used for a batch of plain values")


def test_an_insert_from_select_and_an_update_fill_their_own_placeholders(app, monkeypatch):
    """Statements that are not plain INSERTs bind names of their own: on PostgreSQL each row becomes one
    statement with its values quoted into those placeholders, in the same single query."""
    sent = []
    real = db._execute_as_text
    monkeypatch.setattr(db, "_execute_as_text", lambda *a, **k: sent.append(real(*a, **k)) or sent[-1])
    columns = ["res_type", "res_id", "param", "system", "code"]
    constants = (literal_column(f"'{v}'") for v in ("identifier", "s", "100% sure"))
    picked = select(bindparam("t"), bindparam("i"), *constants)
    copy = insert(TokenIndex.__table__).from_select(columns, picked)
    table = TokenIndex.__table__
    rename = update(table).where(table.c.res_id == bindparam("old")).values(res_id=bindparam("new"))
    batch = [
        (insert(table), _rows(1)),
        (copy, [{"t": "Patient", "i": "fs1"}, {"t": "Patient", "i": "fs2"}]),
        (rename, [{"old": "fs2", "new": "fs3"}]),
    ]
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        postgres = s.connection().dialect.name == "postgresql"
        db.execute_batch(s, batch)
    with app.app_context(), db.new_session() as s:
        got = s.execute(select(TokenIndex.res_id, TokenIndex.code).order_by(TokenIndex.res_id)).all()
    assert got == [("fs1", "100% sure"), ("fs3", "100% sure"), ("r1", "c0")]
    assert sent == [True] or not postgres


def test_a_batch_that_opens_its_transaction_is_rolled_back_with_it(app):
    """The batch is the transaction's first statement (nothing has begun it on the connection yet): an error
    after it must still take it back."""
    failing = pytest.raises(RuntimeError, match="after the batch")
    with app.app_context(), db.new_session() as s, failing, db.write_transaction(s):
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(3))])
        raise RuntimeError("after the batch")
    assert _count(app) == 0


# -- read_ahead: pages of a streamed result fetched one step ahead by a helper thread ------------------------
def test_read_ahead_yields_every_page_in_order():
    pages = [[i, i + 1] for i in range(0, 200, 2)]
    assert list(db.read_ahead(iter(pages))) == pages


def test_read_ahead_raises_the_helpers_error_after_the_pages_before_it():
    def source():
        yield [1]
        yield [2]
        raise ValueError("the database went away")

    got = []
    with pytest.raises(ValueError, match="went away"):
        for page in db.read_ahead(source()):
            got.append(page)
    assert got == [[1], [2]]


def test_read_ahead_stops_its_helper_when_the_reader_stops_early():
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield [i]

    pages = db.read_ahead(source(), depth=2)
    assert next(pages) == [0]
    pages.close()  # the reader gives up (an exception in a caller's loop does the same)
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert len(produced) < 10


def test_read_ahead_does_not_hang_when_the_reader_stops_as_the_source_ends():
    """The helper has queued ``depth`` pages and comes to the end while the reader gives up: handing over
    the end mark must not wait for a reader that is gone."""
    ended = threading.Event()

    def source():
        yield from ([1], [2], [3])
        ended.set()  # the helper asked for more: the queue holds [2] and [3], the end mark waits

    pages = db.read_ahead(source(), depth=2)
    assert next(pages) == [1]
    assert ended.wait(timeout=5)
    closer = threading.Thread(target=pages.close)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive(), "closing read_ahead hung"


# -- commit_batch(flush=False): the records of reads commit without waiting for the WAL flush ----------------
def _setting_rows(app) -> list[tuple[str, str]]:
    with app.app_context(), db.new_session() as s:
        rows = s.execute(select(TokenIndex.res_id, TokenIndex.code).where(TokenIndex.param == "sync"))
        return sorted(rows.all())


@pytest.mark.parametrize("opened", [True, False], ids=["in-read-transaction", "own-transaction"])
@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no-flush"])
@pytest.mark.parametrize("path", ["literals", "pipeline"])
def test_commit_batch_without_flush_turns_synchronous_commit_off_for_its_own_transaction(
    app, opened, flush, path
):
    """PostgreSQL: each statement of the batch sees the transaction's ``synchronous_commit``, ``off`` only
    when asked, and the connection is back to ``on`` afterwards (SET LOCAL), whichever way the batch
    travels. SQLite: the rows are written either way."""
    table = TokenIndex.__table__
    columns = ["res_type", "res_id", "param", "system", "code"]
    with app.app_context(), db.new_session() as s:
        postgres = s.connection().dialect.name == "postgresql"
        setting = func.current_setting(literal_column("'synchronous_commit'"))
        now = setting if postgres else literal_column("'n/a'")
        seen = select(bindparam("t"), bindparam("i"), literal_column("'sync'"), literal_column("'s'"), now)
        batch = [(insert(table).from_select(columns, seen), [{"t": "Patient", "i": "seen"}])]
        if path == "pipeline":  # a value no literal carries sends the whole batch through the pipeline
            inf = {"res_type": "Observation", "res_id": "o1", "param": "value-quantity"}
            batch.append((insert(NumberIndex.__table__), [{**inf, "value": float("inf")}]))
        if opened:
            s.execute(select(func.count()).select_from(TokenIndex))
        db.commit_batch(s, batch, flush=flush)
        assert not s.in_transaction()
        after = s.execute(select(setting)).scalar() if postgres else "on"
    assert after == "on"
    expected = ("on" if flush else "off") if postgres else "n/a"
    assert _setting_rows(app) == [("seen", expected)]


# -- fetch_one: the read by id, straight through psycopg on PostgreSQL ---------------------------------------
def _stored(app, pid: str) -> None:
    current = {"res_type": "Patient", "res_id": pid, "version": 2, "deleted": False, "last_updated": AT}
    versions = [{**current, "version": v, "method": "PUT", "body": f'{{"v":{v},"é":"ü"}}'} for v in (1, 2)]
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        db.execute_batch(
            s, [(insert(Resource.__table__), [current]), (insert(ResourceVersion.__table__), versions)]
        )


AT = datetime(2026, 11, 25, 7, 30, 1, 123000, tzinfo=UTC)


def test_fetch_one_returns_what_core_returns(app):
    _stored(app, "p1")
    with app.app_context(), db.new_session() as s:
        conn = s.connection()
        for params in ({"t": "Patient", "i": "p1"}, {"t": "Patient", "i": "absent"}):
            fast = db.fetch_one(conn, _READ_CURRENT, params)
            core = conn.execute(_READ_CURRENT, params).one_or_none()
            assert fast == (tuple(core) if core is not None else None)
        row = db.fetch_one(conn, _READ_CURRENT, {"t": "Patient", "i": "p1"})
    assert row is not None
    assert row[2] == 2 and row[6] == '{"v":2,"é":"ü"}'
    assert row[3] == AT and row[3].tzinfo is UTC  # as UTCDateTime gives it, on both databases


def test_fetch_one_refuses_more_than_one_row(app):
    _stored(app, "p2")
    every_version = select(*_COLUMNS).where(ResourceVersion.res_id == bindparam("i"))
    with app.app_context(), db.new_session() as s, pytest.raises(MultipleResultsFound):
        db.fetch_one(s.connection(), every_version, {"i": "p2"})


def test_fetch_one_invalidates_a_connection_the_server_dropped(app):
    with app.app_context(), db.new_session() as s:
        conn = s.connection()
        if conn.dialect.name != "postgresql":
            pytest.skip("PostgreSQL's path")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with db.engine().connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(psycopg.OperationalError):
            db.fetch_one(conn, _READ_CURRENT, {"t": "Patient", "i": "p1"})
        assert conn.invalidated
        s.rollback()
    with app.app_context(), db.new_session() as s:  # the pool hands out a working connection again
        assert db.fetch_one(s.connection(), _READ_CURRENT, {"t": "Patient", "i": "none"}) is None


# -- the request's lean connection (PostgreSQL): a read and its audit record without the Session ------------
def _pg_only(app) -> None:
    with app.app_context():
        if db.engine().dialect.name != "postgresql":
            pytest.skip("PostgreSQL's path")


@pytest.mark.parametrize(
    "value", ["", "plain", "it's", "back\\slash", "both ' and \\", "ünï 😀 \u2028", '{"a":"b"}', "''"]
)
def test_a_string_literal_is_what_libpq_quotes(app, value):
    _pg_only(app)
    from psycopg import pq

    with app.app_context(), db.engine().connect() as conn:
        raw = conn.connection.dbapi_connection
        escape = pq.Escaping(raw.pgconn)
        expected = escape.escape_literal(value.encode()).decode()
        assert db._literal(value, escape, "utf-8") == expected
        assert conn.exec_driver_sql("SELECT " + expected.replace("%", "%%")).scalar() == value


def test_a_request_that_only_reads_does_so_without_the_session(app):
    """The read by id and the record committed after it run on the serving thread's own connection in
    autocommit: the Session never begins and the batch commits as a transaction of its own. The connection
    stays with the thread for its next request (no pool checkout per request), idle; the pool's other
    connections are handed out as usual (not in autocommit); disposing of the engine closes it."""
    _pg_only(app)
    _stored(app, "p3")
    link = [{"event_id": "ev-lean", "kind": "patient", "ref": "Patient/p3", "recorded": AT}]
    with app.test_request_context("/fhir/R4/Patient/p3"):
        s = db.session()
        row = db.fetch_one(s, _READ_CURRENT, {"t": "Patient", "i": "p3"})
        assert row is not None and row[2] == 2
        lean = db.lean_connection(s)
        assert lean is not None and lean.driver_connection.autocommit
        db.commit_batch(s, [(insert(AuditLink.__table__), link)], flush=False)
        assert not s.in_transaction()
        pool = db.engine().pool
        assert pool.checkedout() == 1
    assert pool.checkedout() == 1  # kept by this thread
    assert _links(app, "ev-lean") == [("Patient/p3", AT)]
    with app.test_request_context("/fhir/R4/Patient/p3"):
        again = db.lean_connection(db.session())
        assert again is lean and again.driver_connection.pgconn.transaction_status == 0  # idle
        with db.engine().connect() as conn:
            assert conn.connection.dbapi_connection.autocommit is False
    raw = lean.driver_connection
    app.extensions["fhir_db"]["engine"].dispose()
    assert raw.closed


def test_a_broken_lean_connection_is_replaced(app):
    _pg_only(app)
    with app.test_request_context("/fhir/R4/Patient/x"):
        first = db.lean_connection(db.session())
        pid = first.driver_connection.info.backend_pid
    with app.app_context(), db.engine().connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    with app.test_request_context("/fhir/R4/Patient/x"):
        s = db.session()
        with pytest.raises(psycopg.OperationalError):
            db.fetch_one(s, _READ_CURRENT, {"t": "Patient", "i": "x"})
    with app.test_request_context("/fhir/R4/Patient/x"):
        s = db.session()
        assert db.fetch_one(s, _READ_CURRENT, {"t": "Patient", "i": "x"}) is None  # a new connection
        assert db.lean_connection(s).driver_connection.info.backend_pid != pid


def test_once_the_session_has_begun_its_transaction_reads_and_records_stay_in_it(app):
    _pg_only(app)
    with app.test_request_context("/fhir/R4/Patient/p4"):
        s = db.session()
        with db.write_transaction(s):
            pointer = {"res_type": "Patient", "res_id": "p4", "version": 1, "deleted": False}
            s.execute(insert(Resource.__table__), [{**pointer, "last_updated": AT}])
            assert db.lean_connection(s) is None
            # the uncommitted pointer row is visible: the read ran in the session's transaction
            assert db.fetch_one(s, _VERSION_OF, {"i": "p4"}) == (1,)
        assert g.get("db_lean") is None


_VERSION_OF = select(Resource.version).where(Resource.res_id == bindparam("i"))


def test_a_failed_record_on_the_lean_connection_rolls_back_and_the_connection_serves_on(app):
    _pg_only(app)
    link = {"event_id": "ev-dup", "kind": "patient", "ref": "Patient/x", "recorded": AT}
    with app.test_request_context("/fhir/R4/Patient/x"):
        s = db.session()
        with pytest.raises(IntegrityError):
            db.commit_batch(s, [(insert(AuditLink.__table__), [link, link])])
        lean = db.lean_connection(s)
        assert lean is not None
        assert db.fetch_one(s, _READ_CURRENT, {"t": "Patient", "i": "x"}) is None  # still usable
        db.commit_batch(s, [(insert(AuditLink.__table__), [link])])
    assert _links(app, "ev-dup") == [("Patient/x", AT)]


def test_only_the_read_by_id_is_prepared_and_it_gets_the_generic_plan(app):
    """A search statement run many times stays unprepared (planned with its values each time: a generic
    plan would lose the constants its indexes need); besides one-row writes, the read by primary key is
    prepared and, once
    PostgreSQL has seen its custom plans cost the same, runs a generic plan with no planning at all."""
    _pg_only(app)
    _stored(app, "p5")
    search = select(Resource.res_id).where(Resource.res_type == bindparam("t"), Resource.res_id.like("p%"))
    with app.app_context(), db.engine().connect() as conn:
        for _ in range(12):
            assert db.fetch_one(conn, _READ_CURRENT, {"t": "Patient", "i": "p5"}) is not None
            conn.execute(search, {"t": "Patient"}).all()
        prepared = conn.exec_driver_sql(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).all()
    assert not [p for p in prepared if "LIKE" in p[0]], prepared
    reads = [p for p in prepared if "JOIN resource" in p[0]]
    assert len(reads) == 1, prepared
    _, generic, custom = reads[0]
    assert generic >= 5 and custom <= 5
    others = [p[0] for p in prepared if p not in reads]  # the writes' one-row statements (_stored's)
    assert all(s.lstrip().startswith(("INSERT", "UPDATE", "DELETE")) for s in others), others


def test_a_single_batch_write_in_a_request_commits_on_the_lean_connection(app):
    """The Session never begins: the batch goes as BEGIN ... COMMIT in one query. An error before the batch
    writes nothing; a query through the Session inside the write makes the batch join its transaction."""
    _pg_only(app)
    with app.test_request_context("/fhir/R4/Patient", method="POST"):
        s = db.session()
        with db.write_transaction(s, single_batch=True):
            assert not s.in_transaction()
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
        assert not s.in_transaction() and db.lean_connection(s) is not None
        with pytest.raises(ValueError), db.write_transaction(s, single_batch=True):
            raise ValueError("refused before the batch")
        with db.write_transaction(s, single_batch=True):
            assert s.execute(select(func.count()).select_from(TokenIndex)).scalar_one() == 2
            assert db.lean_connection(s) is None  # the Session has begun: the batch joins it
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(1, "r9"))])
        assert not s.in_transaction()
    assert _count(app) == 3


def test_the_read_by_id_prepares_again_when_its_statement_is_gone(app):
    """A pooler or a DISCARD may drop prepared statements behind the connection's back: the read prepares
    its statement again instead of failing."""
    _pg_only(app)
    _stored(app, "p6")
    with app.app_context(), db.engine().connect() as conn:
        assert db.fetch_one(conn, _READ_CURRENT, {"t": "Patient", "i": "p6"}) is not None
        conn.exec_driver_sql("DEALLOCATE ALL")
        conn.commit()
        row = db.fetch_one(conn, _READ_CURRENT, {"t": "Patient", "i": "p6"})
        assert row is not None and row[1] == "p6"


def test_threads_beyond_the_pool_size_borrow_their_lean_connection_per_request(app):
    """At most the pool's size is kept by threads; a thread beyond that returns its connection to the pool
    at the end of each request, out of autocommit, so the Session's work never starves."""
    _pg_only(app)
    held = app.extensions["fhir_db"]["lean"]
    pool = app.extensions["fhir_db"]["engine"].pool
    size = pool.size()
    results: list[tuple[bool, int]] = []
    ready, go = threading.Barrier(size + 2), threading.Event()  # the threads and this one

    def serve() -> None:
        with app.test_request_context("/fhir/R4/Patient/x"):
            lean = db.lean_connection(db.session())
            ready.wait()
            go.wait()
        results.append((getattr(held.local, "conn", None) is lean, pool.checkedout()))

    threads = [threading.Thread(target=serve) for _ in range(size + 1)]
    for t in threads:
        t.start()
    ready.wait()
    assert pool.checkedout() == size + 1
    go.set()
    for t in threads:
        t.join()
    assert sorted(kept for kept, _ in results) == [False] + [True] * size
    assert pool.checkedout() == size  # the one beyond the limit went back
    assert len(held.held) == size


# -- batches as EXECUTE of statements prepared once per connection ------------------------------------------
def _prepared_on(raw) -> list[str]:
    with raw.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        return [sql for (sql,) in cur.fetchall()]


def test_a_batch_runs_its_statements_of_few_rows_as_prepared_ones(app):
    """One-row statements and INSERTs of up to _PREPARED_ROWS rows run as EXECUTE of a statement prepared
    on the connection; a bigger INSERT stays a VALUES list. Every row is written either way."""
    _pg_only(app)
    big = db._PREPARED_ROWS + 1
    token = insert(TokenIndex.__table__)  # statements are built once, at import, as the app's are
    batch = [
        (token, _rows(3)),
        (insert(AuditLink.__table__), _link_rows("ev-prepared", AT)[:1]),
        (token, _rows(big, "big")),
    ]
    with app.test_request_context("/fhir/R4/Patient/x"):
        s = db.session()
        db.commit_batch(s, batch)
        db.commit_batch(s, [(token, _rows(3, "r2"))])  # the same statement again: prepared once
        prepared = _prepared_on(db.lean_connection(s).driver_connection)
    inserts = [sql for sql in prepared if sql.startswith("INSERT")]
    assert len([sql for sql in inserts if "search_token" in sql and sql.endswith("$15)")]) == 1
    assert len([sql for sql in inserts if "audit_link" in sql]) == 1
    assert not [sql for sql in inserts if f"${5 * big})" in sql]  # the big one went as text
    assert _count(app) == 3 + big + 3
    assert _links(app, "ev-prepared") == [(_AWKWARD[0], AT)]


def test_a_batch_runs_again_when_the_connection_lost_its_prepared_statements(app):
    """DISCARD ALL or a pooler may drop them: the batch, which wrote nothing, is prepared and run again."""
    _pg_only(app)
    with app.test_request_context("/fhir/R4/Patient/x"):
        s = db.session()
        db.commit_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
        raw = db.lean_connection(s).driver_connection
        raw.execute("DEALLOCATE ALL")
        db.commit_batch(s, [(insert(TokenIndex.__table__), _rows(2, "r2"))])
        assert any("search_token" in sql for sql in _prepared_on(raw))
    assert _count(app) == 4


def test_a_statement_postgresql_cannot_prepare_runs_as_text(app, monkeypatch):
    _pg_only(app)
    stmt = insert(TokenIndex.__table__)  # a statement object of its own: nothing cached for it yet
    real = db._numbered
    monkeypatch.setattr(
        db, "_numbered", lambda st, d, k: b"INSERT INTO nowhere" if st is stmt else real(st, d, k)
    )
    with app.test_request_context("/fhir/R4/Patient/x"):
        db.commit_batch(db.session(), [(stmt, _rows(1))])
        db.commit_batch(db.session(), [(stmt, _rows(1, "r2"))])
    assert db._EXECUTABLE[(stmt, tuple(_rows(1)[0]), 1)] is None  # not tried again
    assert _count(app) == 2


def test_nothing_is_prepared_inside_a_transaction_in_progress(app):
    """A PREPARE that failed there would abort the transaction: a statement not yet prepared on the
    connection runs as text until the connection is idle."""
    _pg_only(app)
    stmt = insert(TokenIndex.__table__)
    with app.app_context(), db.new_session() as s:
        s.execute(select(func.count()).select_from(TokenIndex))  # the transaction has begun
        raw = s.connection().connection.dbapi_connection
        db.commit_batch(s, [(stmt, _rows(1))])
        named = db._EXECUTABLE[(stmt, tuple(_rows(1)[0]), 1)]
        assert named is not None and named[0] not in db._PREPARED.get(raw, set())
        db.commit_batch(s, [(stmt, _rows(1, "r2"))])  # idle now: prepared and run
        assert named[0] in db._PREPARED[raw]
    assert _count(app) == 2
