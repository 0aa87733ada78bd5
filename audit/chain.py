"""The hash chain over audit events, built after they commit by one chainer at a time.

Requests append events without any shared lock (a lock held across every commit would serialise the
whole server on the disk's flush). The chainer then gives each committed event the next ``seq`` (gap-free)
and ``hash = SHA-256(previous hash || seq as 8 bytes || canonical JSON)``, in batches:

- PostgreSQL: only one chainer runs (transaction-level advisory lock), and it only takes events whose
  writing transaction is below the snapshot's xmin, i.e. finished: a slow transaction that commits an old
  ``pos`` later is still chained, never skipped. Order: (txid, pos).
- SQLite: writers are serialised by the database, so ``pos`` order is commit order.

Each run may also sign a checkpoint of the head (``audit.signing``) for auditors to keep elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from flask import Flask
from sqlalchemy import BigInteger, Connection, Engine, bindparam, insert, select, text, tuple_

from audit import signing
from audit.models import AuditRow, ChainLink, Checkpoint
from fhir_api.db import WRITE, format_instant, on_dispose

log = logging.getLogger("fhir_api.audit")

GENESIS = "0" * 64
LOCK_KEY = 0x46484952_41554454  # "FHIRAUDT": the chainer's advisory lock
# Events per chaining transaction. A batch holds its events' canonical JSON (~2 kB each) twice, in the
# driver's result and in Python: 1,000 keep that to a few MB in whichever server process chains a backlog
# (an import's events, a restart's), where 5,000 added some 25 MB to its peak; the rate is the same
# (~50,000 events/s in-process either way).
BATCH = 1000


def link_hash(prev_hash: str, seq: int, body: str) -> str:
    h = hashlib.sha256(bytes.fromhex(prev_hash))
    h.update(seq.to_bytes(8, "big"))
    h.update(body.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    pos: int
    txid: int | None


_HEAD = text("SELECT seq, hash, pos, txid FROM audit_chain ORDER BY seq DESC LIMIT 1")
_HORIZON = text("SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint")
_LOCK = text("SELECT pg_try_advisory_xact_lock(:k)")


def head(conn: Connection) -> Head:
    row = conn.execute(_HEAD).first()
    return Head(*row) if row else Head(0, GENESIS, 0, None)


def _pending(conn: Connection, h: Head, limit: int) -> list[tuple[int, int | None, datetime, str]]:
    if conn.dialect.name == "postgresql":
        horizon = conn.execute(_HORIZON).scalar()
        last = h.txid if h.txid is not None else -1
        params = {"horizon": horizon, "last": last, "pos": h.pos}
        return [tuple(r) for r in conn.execute(_pending_statement(True, limit), params)]  # type: ignore[misc]
    return [tuple(r) for r in conn.execute(_pending_statement(False, limit), {"pos": h.pos})]  # type: ignore[misc]


@cache
def _pending_statement(postgresql: bool, limit: int) -> Any:
    """The next events to chain, built once per backend and batch size (every process runs this every
    second)."""
    e = AuditRow.__table__.c
    stmt = select(e.pos, e.txid, e.recorded, e.body)
    if postgresql:
        # a row comparison, so the (txid, pos) index seeks to the resume point instead of filtering
        resume = tuple_(e.txid, e.pos) > tuple_(
            bindparam("last", type_=BigInteger), bindparam("pos", type_=BigInteger)
        )
        stmt = stmt.where(e.txid < bindparam("horizon", type_=BigInteger), resume).order_by(e.txid, e.pos)
    else:
        stmt = stmt.where(e.pos > bindparam("pos", type_=BigInteger)).order_by(e.pos)
    return stmt.limit(limit)


def _lock(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return True  # BEGIN IMMEDIATE already holds SQLite's one write lock
    return bool(conn.execute(_LOCK, {"k": LOCK_KEY}).scalar())


def extend(engine: Engine, *, limit: int = BATCH, key: signing.OKPKey | None = None, every: float = 0) -> int:
    """Chain up to ``limit`` finished events; sign a checkpoint when ``key`` is given and the last one is
    older than ``every`` seconds. Returns how many events were chained (0 when another chainer is busy)."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if not _lock(conn):
            return 0
        h = head(conn)
        rows = _pending(conn, h, limit)
        links = []
        prev, seq = h.hash, h.seq
        for pos, txid, recorded, body in rows:
            seq += 1
            digest = link_hash(prev, seq, body)
            links.append(
                {
                    "seq": seq,
                    "pos": pos,
                    "recorded": recorded,
                    "prev_hash": prev,
                    "hash": digest,
                    "txid": txid,
                }
            )
            prev = digest
        if links:
            _append(conn, links)
        if key is not None and seq > 0:
            _checkpoint(conn, seq, prev, key, every)
        return len(links)


_CHAIN_COLUMNS = ("seq", "pos", "recorded", "prev_hash", "hash", "txid")


def _append(conn: Connection, links: list[dict[str, object]]) -> None:
    """The new links in the chainer's transaction: on PostgreSQL by ``COPY`` (a second's worth of a busy
    server's events in one stream, without building an INSERT of bound rows), elsewhere by INSERT."""
    if conn.dialect.name != "postgresql":
        conn.execute(insert(ChainLink), links)
        return
    raw = conn.connection.dbapi_connection
    sql = f"COPY {ChainLink.__tablename__} ({', '.join(_CHAIN_COLUMNS)}) FROM STDIN"
    with raw.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[union-attr]
        copy.write("".join(map(_copy_line, links)))


def _copy_line(link: dict[str, object]) -> str:
    """One link in COPY's text format, written directly (psycopg's per-row adaptation cost more than the
    hashing): integers, hex digests and a timestamp carry no tab, newline or backslash to escape."""
    recorded = link["recorded"]
    assert isinstance(recorded, datetime)
    if recorded.tzinfo is None:  # stored as UTC (SQLite has no zones; PostgreSQL gives them back aware)
        recorded = recorded.replace(tzinfo=UTC)
    txid = link["txid"]
    txid_text = "\\N" if txid is None else str(int(txid))  # type: ignore[call-overload]
    return (
        "\t".join(
            (
                str(link["seq"]),
                str(link["pos"]),
                recorded.isoformat(),
                str(link["prev_hash"]),
                str(link["hash"]),
                txid_text,
            )
        )
        + "\n"
    )


def _checkpoint(conn: Connection, seq: int, digest: str, key: signing.OKPKey, every: float) -> None:
    c = Checkpoint.__table__.c
    last = conn.execute(select(c.seq, c.created).order_by(c.seq.desc()).limit(1)).first()
    now = datetime.now(UTC)
    if last is not None and (last.seq >= seq or (now - last.created).total_seconds() < every):
        return
    payload = {"seq": seq, "hash": digest, "time": format_instant(now)}
    conn.execute(
        insert(Checkpoint),
        [{"seq": seq, "hash": digest, "created": now, "key_id": key.kid, "jws": signing.sign(payload, key)}],
    )


def catch_up(engine: Engine, *, key: signing.OKPKey | None = None, every: float = 0) -> int:
    """Chain everything finished so far (CLI, tests, exports): batches until none is left."""
    total = 0
    while True:
        n = extend(engine, key=key, every=every)
        total += n
        if n < BATCH:
            return total


# -- the background chainer of each app process ------------------------------------------------------------
class Chainer:
    """A daemon thread per process: every ``interval`` seconds (or sooner when woken), chain what has
    committed. Several processes and hosts may run one each; the lock lets one work at a time."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval = float(app.config.get("AUDIT_CHAIN_INTERVAL", 1.0))
        self.every = float(app.config.get("AUDIT_CHECKPOINT_INTERVAL", 60.0))
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="audit-chainer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop after the batch under way (the app's pool was closed: its database may be going away)."""
        self.stopped.set()
        self.wake.set()

    def _run(self) -> None:
        engine = self.app.extensions["fhir_db"]["engine"]
        key = signing.app_key(self.app)
        while not self.stopped.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                while not self.stopped.is_set() and extend(engine, key=key, every=self.every) == BATCH:
                    pass
            except Exception as exc:
                if self.stopped.is_set():
                    return
                log.warning("audit chainer: %s; retrying in %.1fs", type(exc).__name__, self.interval)
                self.stopped.wait(self.interval)


def start_chainer(app: Flask) -> Chainer | None:
    """Start this process's chainer once (after a fork, the child starts its own)."""
    if app.testing or float(app.config.get("AUDIT_CHAIN_INTERVAL", 1.0)) <= 0:
        return None
    state = app.extensions.setdefault("fhir_audit", {})
    chainer = state.get("chainer")
    if chainer is not None and state.get("chainer_pid") == os.getpid():
        return chainer
    chainer = Chainer(app)
    state["chainer"], state["chainer_pid"] = chainer, os.getpid()
    on_dispose(app.extensions["fhir_db"]["engine"], chainer.stop)
    chainer.start()
    return chainer
