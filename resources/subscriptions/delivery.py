"""Sending notifications: leases, order, signatures, retries with backoff, endpoint health.

A process leases a subscription with an event due (no other process sends for it meanwhile), sends its
first pending event, records the attempt (and its audit event) and moves on only when that event is
settled: per-subscription order is commit order, and a failing event holds back the later ones until it
is delivered or given up (after the retry window, or at once on a 4xx other than 408/429).

After ``SUBSCRIPTION_MAX_FAILURES`` consecutive failures the subscription goes to ``error`` (the reason in
the resource, a log line, a metric); retries go on at the capped backoff, and the first success makes it
``active`` again. A notification carries only what the owner may read at the moment it is sent: an event
about a resource the owner can no longer see is withheld, never sent.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from flask import Flask
from sqlalchemy.orm import Session

from fhir_api import db, outbound
from fhir_api.config import flag
from fhir_api.errors import FhirError
from resources import interactions
from resources.repository import ResourceRepository
from resources.subscriptions import notifications, sealed, signing, status, store
from resources.subscriptions.dispatch import DISABLED
from resources.subscriptions.owner import access_of

log = logging.getLogger("fhir_api.subscriptions")

MAX_RESPONSE_BYTES = 0  # the answer's body is never read: only its status matters
PER_LEASE = 50  # events sent for one subscription before its lease is given back


@dataclass(frozen=True)
class Settings:
    timeout: float
    max_failures: int
    retry_window: timedelta
    backoff_base: float
    backoff_cap: float
    lease: timedelta
    allow_private: bool
    secret_grace: timedelta
    client_cert: tuple[str, str] | None = None  # (certificate, key) files presented for mutual TLS

    @classmethod
    def of(cls, config: Any) -> Settings:
        return cls(
            timeout=float(config.get("SUBSCRIPTION_TIMEOUT", 10)),
            max_failures=int(config.get("SUBSCRIPTION_MAX_FAILURES", 10)),
            retry_window=timedelta(hours=float(config.get("SUBSCRIPTION_RETRY_HOURS", 72))),
            backoff_base=float(config.get("SUBSCRIPTION_BACKOFF_BASE", 5)),
            backoff_cap=float(config.get("SUBSCRIPTION_BACKOFF_CAP", 3600)),
            lease=timedelta(seconds=float(config.get("SUBSCRIPTION_LEASE", 120))),
            allow_private=flag(config.get("SUBSCRIPTION_ALLOW_PRIVATE")),
            secret_grace=timedelta(hours=float(config.get("SUBSCRIPTION_SECRET_GRACE_HOURS", 24))),
            client_cert=(config["SUBSCRIPTION_CLIENT_CERT"], config["SUBSCRIPTION_CLIENT_KEY"])
            if config.get("SUBSCRIPTION_CLIENT_CERT") and config.get("SUBSCRIPTION_CLIENT_KEY")
            else None,
        )


@dataclass
class Outcome:
    code: int | None
    error: str | None
    latency_ms: int
    retry_after: float | None = None
    permanent: bool = False  # not worth retrying (an endpoint the server may not call)

    @property
    def delivered(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def retryable(self) -> bool:
        if self.permanent:
            return False
        return self.code is None or self.code in (408, 429) or self.code >= 500


def backoff(attempts: int, s: Settings, retry_after: float | None = None) -> float:
    """Seconds before the next try: exponential with full jitter, at least what Retry-After asked."""
    delay = min(s.backoff_cap, s.backoff_base * (2 ** max(0, attempts - 1)))
    delay = random.uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(retry_after, s.backoff_cap))
    return delay


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - db.now()).total_seconds())
    except (TypeError, ValueError):
        return None


def post(url: str, body: bytes, headers: dict[str, str], s: Settings) -> Outcome:
    """One delivery attempt through fhir_api.outbound (the address checked at every attempt), over within
    twice the timeout whatever the endpoint does: a receiver that trickles its answer out byte by byte is
    abandoned (its thread ends when the socket does), and the worker moves on."""
    started = time.perf_counter()
    try:
        target = outbound.check(url, allow_private=s.allow_private, what="The endpoint")
    except outbound.UnsafeTarget as exc:
        return Outcome(None, str(exc), _ms(started), permanent=True)
    box: dict[str, Any] = {}

    def attempt() -> None:
        try:
            box["resp"], _ = outbound.send(
                "POST",
                target,
                headers=headers,
                data=body,
                timeout=s.timeout,
                max_bytes=MAX_RESPONSE_BYTES,
                cert=s.client_cert if url.startswith("https:") else None,
            )
        except BaseException as exc:  # handed to the worker below
            box["exc"] = exc

    runner = threading.Thread(target=attempt, name="subscription-post", daemon=True)
    runner.start()
    runner.join(2 * s.timeout)
    if runner.is_alive():
        return Outcome(None, f"no complete answer within {2 * s.timeout:g} s", _ms(started))
    try:
        if "exc" in box:
            raise box["exc"]
        resp = box["resp"]
    except requests.Timeout:
        return Outcome(None, f"no answer within {s.timeout:g} s", _ms(started))
    except requests.RequestException as exc:
        return Outcome(None, f"connection failed ({type(exc).__name__})", _ms(started))
    retry_after = _retry_after(resp.headers.get("Retry-After"))
    error = None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"
    return Outcome(resp.status_code, error, _ms(started), retry_after)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


# -- one process's work -------------------------------------------------------------------------------------
def owner_name() -> str:
    return f"{socket.gethostname()}:{threading.get_native_id()}"


def deliver_once(session: Session, s: Settings, stop: threading.Event | None = None) -> int:
    """Lease the subscriptions with events due and send them; returns how many attempts were made."""
    me = owner_name()
    with db.write_transaction(session):
        leased = store.claim(session, me, db.now(), s.lease, limit=8)
    # stop taking events while an attempt could still finish before the lease runs out (else another
    # process could take the subscription over and send the same event concurrently)
    deadline = time.monotonic() + s.lease.total_seconds() - s.timeout - 5
    attempts = 0
    for sub_id in leased:
        try:
            attempts += _work(session, sub_id, me, s, stop, deadline)
        finally:
            if session.in_transaction():
                session.rollback()
            with db.write_transaction(session):
                store.release(session, sub_id, me)
    return attempts


def _work(
    session: Session, sub_id: str, me: str, s: Settings, stop: threading.Event | None, deadline: float
) -> int:
    attempts = 0
    for _ in range(PER_LEASE):
        if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
            break
        sub = store.get(session, sub_id)
        if sub is None or sub.status not in store.LIVE or sub.lease_owner != me:
            break
        event = store.head(session, sub_id)
        now = db.now()
        if event is None or (event.next_attempt is not None and event.next_attempt > now):
            with db.write_transaction(session):
                _advance(session, sub_id)
            break
        access = access_of(session, sub)
        if access is None:
            with db.write_transaction(session):
                _lock_resource(session, sub_id)
                status.set_status(session, sub_id, "error", DISABLED)
                fresh = store.get(session, sub_id, lock=True)
                if fresh is not None:
                    fresh.due = now + timedelta(hours=1)
            break
        body = _body(session, sub, event, access)
        if body is None:
            with db.write_transaction(session):
                _lock_resource(session, sub_id)
                _settle(session, event.id, "withheld", now)
                _advance(session, sub_id)
            continue
        secrets_ = [sealed.open_(sub_id, sub.data_key, "secret", sub.secret)]
        if sub.old_secret and sub.old_until and sub.old_until > now:
            secrets_.append(sealed.open_(sub_id, sub.data_key, "secret", sub.old_secret))
        headers = {
            "Content-Type": "application/fhir+json",
            **dict(sealed.open_headers(sub_id, sub.data_key, sub.headers)),
            **signing.headers(secrets_, body),
            "X-Subscription-Id": sub_id,
            "X-Event-Number": str(event.event_number),
            "X-Event-Id": f"{sub_id}:{event.event_number}",
        }
        if event.replay:
            headers["X-Replay"] = "true"
        session.commit()  # no transaction stays open while the endpoint answers
        endpoint = sub.endpoint
        outcome = post(endpoint, body, headers, s)
        attempts += 1
        _record(session, sub, event, outcome, s, endpoint)
    return attempts


def _body(session: Session, sub: Any, event: Any, access: Any) -> bytes | None:
    """The notification, or None when the owner may not read what it would say."""
    base = json.loads(sub.principal).get("base") or "urn:fhir-api"
    repo = ResourceRepository(session)
    text = None
    if event.event == "delete":  # the deletion of something it may (still) read: its last version
        try:
            interactions.vread(repo, event.res_type, event.res_id, event.version - 1, access)
        except FhirError:
            return None
    else:
        try:
            stored = interactions.vread(repo, event.res_type, event.res_id, event.version, access)
        except FhirError:
            return None
        text = stored.body
    return notifications.body(
        base=base,
        sub_id=sub.sub_id,
        status=sub.status,
        number=event.event_number,
        content=sub.content,
        event=event.event,
        res_type=event.res_type,
        res_id=event.res_id,
        version=event.version,
        when=event.created,
        resource=text if sub.content == "full-resource" else None,
    )


def _settle(session: Session, delivery_id: int, outcome: str, now: datetime) -> None:
    from resources.subscriptions.models import SubscriptionDelivery

    row = session.get(SubscriptionDelivery, delivery_id, with_for_update=True, populate_existing=True)
    if row is not None:
        row.status, row.finished, row.next_attempt = outcome, now, None


def _advance(session: Session, sub_id: str) -> None:
    """The subscription is due when its first pending event is (never, when none is pending)."""
    sub = store.get(session, sub_id, lock=True)
    if sub is not None:
        sub.due = store.next_due(session, sub_id)


def _lock_resource(session: Session, sub_id: str) -> None:
    """Locks in the order every writer takes them: the Subscription's resource row, then its state row
    (a client's PUT does the same), so the two never deadlock."""
    ResourceRepository(session).current("Subscription", sub_id, lock=True)


def _record(session: Session, sub: Any, event: Any, outcome: Outcome, s: Settings, endpoint: str) -> None:
    """The attempt, its audit event, the event's next state and the subscription's health: one commit."""
    from fhir_api import metrics
    from resources.subscriptions import audit_events
    from resources.subscriptions.models import SubscriptionDelivery

    now = db.now()
    with db.write_transaction(session):
        _lock_resource(session, sub.sub_id)
        row = session.get(SubscriptionDelivery, event.id, with_for_update=True, populate_existing=True)
        fresh = store.get(session, sub.sub_id, lock=True)
        if row is None or fresh is None:
            return
        store.add_attempt(session, row.id, now, outcome.code, outcome.error, outcome.latency_ms)
        row.attempts += 1
        row.last_code, row.last_error, row.latency_ms = outcome.code, outcome.error, outcome.latency_ms
        audit_events.attempt(session, fresh, row, outcome, endpoint)
        if outcome.delivered:
            row.status, row.finished, row.next_attempt = "delivered", now, None
            fresh.failures = 0
            if fresh.status == "error":
                status.set_status(session, fresh.sub_id, "active", None)
                log.info("subscription %s: endpoint recovered, active again", fresh.sub_id)
            metrics.subscription_delivery("delivered")
        else:
            fresh.failures += 1
            expired = now - row.created > s.retry_window
            if outcome.retryable and not expired:
                row.next_attempt = now + timedelta(seconds=backoff(row.attempts, s, outcome.retry_after))
                metrics.subscription_delivery("retry")
            else:
                row.status, row.finished, row.next_attempt = "failed", now, None
                metrics.subscription_delivery("failed")
            if fresh.failures >= s.max_failures and fresh.status == "active":
                reason = f"{fresh.failures} consecutive deliveries failed; last: {outcome.error or 'refused'}"
                status.set_status(session, fresh.sub_id, "error", reason)
                log.warning("subscription %s: %s", fresh.sub_id, reason)
        session.flush()
        fresh.due = store.next_due(session, fresh.sub_id)


# -- the background worker of each app process ---------------------------------------------------------------
FOLLOWER_POLLS = 4  # an idle process that does not match polls every this many intervals


class Worker:
    """A thread per app process: match what changed, then send what is due, every ``interval`` seconds
    (at once again while there is work). Queue and leases live in the database: any number of processes
    may run one; a stopped process loses nothing (its leases run out and another takes over)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval = float(app.config.get("SUBSCRIPTION_POLL_SECONDS", 0.25))
        # Matching a batch costs much the same whatever its size (the server plans the UNION of every
        # subscription's criteria), so the one matching process waits at least this long between batches
        # unless the last one was full or empty: under load, fewer and larger batches for at most that much
        # more latency; an idle server matches a change at the next poll.
        self.match_interval = float(app.config.get("SUBSCRIPTION_MATCH_SECONDS", 0.5))
        # The process that matches also sends what it matched in the same round, and retries fall due at
        # its polls too, so the others, there to share a heavy load, look four times less often when idle:
        # an idle server runs 4 + (processes - 1) polls a second instead of 4 per process.
        self.follower_interval = FOLLOWER_POLLS * self.interval
        self.settings = Settings.of(app.config)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="subscription-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the attempt under way (its outcome is recorded, so it is never sent twice), then stop."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout if timeout is not None else self.settings.timeout + 5)

    def run_here(self) -> None:
        """The loop in the calling thread (``fhir-api subscriptions deliver``)."""
        self._run()

    def _run(self) -> None:
        from resources.subscriptions.dispatch import BATCH, dispatch_once

        with self.app.app_context():
            leader = store.Leadership(db.engine())
        next_match = 0.0
        try:
            while not self.stop_event.is_set():
                busy = False
                try:
                    with self.app.app_context(), db.new_session() as session:
                        if time.monotonic() >= next_match and leader.held():
                            taken = dispatch_once(session)
                            busy = taken > 0
                            if 0 < taken < BATCH:  # an idle server matches at the next poll
                                next_match = time.monotonic() + self.match_interval
                        busy = deliver_once(session, self.settings, self.stop_event) > 0 or busy
                except Exception as exc:
                    if self.stop_event.is_set():
                        return
                    log.warning("subscription worker: %s", type(exc).__name__)
                    busy = False
                if not busy:
                    self.stop_event.wait(self.interval if leader.leads() else self.follower_interval)
        finally:
            leader.release()


def start_worker(app: Flask) -> Worker | None:
    """Once per process (after gunicorn forked it); never under tests, which run the steps themselves."""
    if app.testing or not flag(app.config.get("SUBSCRIPTION_WORKER", True)):
        return None
    import atexit
    import os

    state = app.extensions.setdefault("fhir_subscriptions", {})
    if state.get("pid") == os.getpid():
        return state["worker"]
    worker = Worker(app)
    state["pid"], state["worker"] = os.getpid(), worker
    # Only the flag (no join): an attempt under way still records its outcome before the loop ends.
    db.on_dispose(app.extensions["fhir_db"]["engine"], worker.stop_event.set)
    worker.start()
    atexit.register(worker.stop)
    return worker
