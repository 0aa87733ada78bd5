"""Which access tokens are revoked, answered from memory on PostgreSQL and kept current by LISTEN/NOTIFY.

Checking ``auth_revoked_token`` on every request costs a round trip that, on the read path, is a third of
the request. On PostgreSQL each worker process instead keeps the unexpired revoked ``jti`` values in a set:
a background thread LISTENs on ``fhir_token_revoked`` first, then loads the table (so nothing revoked in
between is missed), and adds each ``jti`` that a revocation NOTIFYs when it commits. While that thread is
not connected and loaded (start-up, a dropped connection), checks fall back to the table, so a revoked token
is never accepted because the listener is down. On SQLite, which runs in-process, the query is cheap and
stays. The delay between a revocation's commit and every other worker refusing the token is the
notification's delivery time (milliseconds on one database server).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime

import psycopg
from flask import Flask, current_app
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from fhir_api import db
from fhir_api.auth.models import RevokedToken

CHANNEL = "fhir_token_revoked"
_POLL_SECONDS = 0.5  # how often the listener looks at its stop flag and purges expired entries
_RETRY_SECONDS = 2.0

log = logging.getLogger(__name__)


class RevocationWatch:
    """One database's revoked token ids (``jti`` -> expiry, epoch seconds) for this process."""

    def __init__(self, engine: Engine) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()
        self._live = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def is_revoked(self, jti: str) -> bool | None:
        """True or False from memory, or None while the listener is not live (ask the table)."""
        self._ensure_started()
        if not self._live.is_set():
            return None
        return jti in self._revoked

    def add(self, jti: str, exp: float) -> None:
        with self._lock:
            self._revoked[jti] = exp

    def stop(self) -> None:
        self._stop.set()

    def _ensure_started(self) -> None:
        # A thread does not survive fork: a worker forked after the master started one starts its own.
        if self._pid == os.getpid() or self._stop.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._live = threading.Event()
            self._revoked = {}
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="fhir-revocation-listener", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    rows = conn.execute(
                        "SELECT jti, expires_at FROM auth_revoked_token WHERE expires_at > now()"
                    ).fetchall()
                    with self._lock:
                        self._revoked = {jti: _epoch(expires) for jti, expires in rows}
                    self._live.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_POLL_SECONDS):
                            jti, _, exp = note.payload.partition(" ")
                            self.add(jti, float(exp or time.time() + 3600))
                        self._purge()
            except Exception as exc:  # any failure means: not live, ask the table, retry
                if not self._stop.is_set():
                    log.warning("token revocation listener lost its connection (%s); retrying", exc)
            finally:
                self._live.clear()
            self._stop.wait(_RETRY_SECONDS)

    def _purge(self) -> None:
        now = time.time()
        with self._lock:
            expired = [jti for jti, exp in self._revoked.items() if exp <= now]
            for jti in expired:
                del self._revoked[jti]


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def init_app(app: Flask) -> None:
    engine = app.extensions["fhir_db"]["engine"]
    if engine.dialect.name != "postgresql":
        return
    watch = RevocationWatch(engine)
    app.extensions["fhir_revocation"] = watch
    db.on_dispose(engine, watch.stop)


def is_revoked(session: Session, jti: str) -> bool:
    watch: RevocationWatch | None = current_app.extensions.get("fhir_revocation")
    if watch is not None:
        known = watch.is_revoked(jti)
        if known is not None:
            return known
    return session.execute(select(RevokedToken.jti).where(RevokedToken.jti == jti)).first() is not None


def announce(session: Session, jti: str, exp: int) -> None:
    """Inside the revoking transaction: every worker's listener hears of it when it commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": f"{jti} {exp}"}
        )


def remember(jti: str, exp: int) -> None:
    """After the revocation committed: this process refuses the token at once, before its notification."""
    watch: RevocationWatch | None = current_app.extensions.get("fhir_revocation")
    if watch is not None:
        watch.add(jti, exp)
