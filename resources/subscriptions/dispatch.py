"""Matching: from the outbox of changes to each subscription's queue of events.

One dispatcher at a time takes the oldest changes (row locks, SKIP LOCKED on PostgreSQL; SQLite has one
writer anyway), matches them with the search engine itself (the criteria plus ``_id``, under the
subscriber's own access, so an insurer's subscription matches only its members' records), numbers each
subscription's events in that order and queues them, then forgets the changes: all in one transaction.

A deletion is an event for the subscriptions that were told about the resource before (the criteria can
no longer be tested against what is gone).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from fhir_api import db
from resources.subscriptions import matcher, status, store
from resources.subscriptions.owner import access_of

BATCH = 500
DISABLED = "The subscribing client is disabled or unknown"
CRITERIA_FAILED = "The criteria can no longer be run as a search; correct them and set status to requested"
log = logging.getLogger("fhir_api.subscriptions")
_CHUNK = 200  # ids per matching query


def dispatch_once(session: Session, limit: int = BATCH) -> int:
    """Match and queue up to ``limit`` changes; returns how many changes were taken."""
    with db.write_transaction(session):
        if not store.dispatcher_lock(session):
            return 0  # another process is matching: events are numbered by one at a time
        changes = store.changes(session, limit)
        if not changes:
            return 0
        by_type: dict[str, list[Any]] = defaultdict(list)
        for c in changes:
            by_type[c.res_type].append(c)
        now = db.now()
        matchable: dict[str, list[tuple[Any, Any]]] = defaultdict(list)  # type -> (subscription, access)
        for sub in store.live(session, sorted(by_type)):
            if sub.end is not None and sub.end <= now:  # Subscription.end: switched off, as the spec says
                status.set_status(session, sub.sub_id, "off", None)
                continue
            access = access_of(session, sub)
            if access is None:  # nothing is matched for a client that may no longer read anything
                if sub.status == "active":
                    status.set_status(session, sub.sub_id, "error", DISABLED)
                continue
            matchable[sub.criteria_type].append((sub, access))
        rows: list[dict[str, Any]] = []
        woken: list[str] = []
        for res_type, subs in sorted(matchable.items()):
            hits = _hits(session, subs, by_type[res_type])
            for sub, _access in subs:
                matched = [c for c in by_type[res_type] if c.res_id in hits.get(sub.sub_id, ())]
                for c in matched:
                    rows.append(_event_row(sub.sub_id, sub.next_seq, c, now))
                    sub.next_seq += 1
                if matched:
                    woken.append(sub.sub_id)
        store.enqueue(session, rows)
        store.wake(session, woken, now)
        store.forget_changes(session, [c.seq for c in changes])
        return len(changes)


def _event_row(sub_id: str, number: int, c: Any, now: Any) -> dict[str, Any]:
    return {
        "sub_id": sub_id,
        "event_number": number,
        "res_type": c.res_type,
        "res_id": c.res_id,
        "version": c.version,
        "event": "delete" if c.deleted else ("create" if c.version == 1 else "update"),
        "replay": False,
        "status": "pending",
        "attempts": 0,
        "next_attempt": now,
        "created": now,
    }


def _hits(session: Session, subs: list[tuple[Any, Any]], changes: list[Any]) -> dict[str, set[str]]:
    """sub_id -> ids among ``changes`` it is notified of: live ones its criteria match now (every
    subscription of the type in one statement per chunk of ids), deleted ones it was told of before."""
    hits: dict[str, set[str]] = defaultdict(set)
    live_ids = sorted({c.res_id for c in changes if not c.deleted})
    gone = sorted({c.res_id for c in changes if c.deleted})
    runnable: list[tuple[Any, Any, Any]] = []
    for sub, access in subs:
        try:
            with session.begin_nested():
                runnable.append((sub, access, matcher.one(session, sub, access)))
        except Exception as exc:
            _broken(session, sub, exc)
    for i in range(0, len(live_ids), _CHUNK):
        chunk = live_ids[i : i + _CHUNK]
        try:
            with session.begin_nested():  # a failing search must not abort the whole batch's transaction
                stmt = matcher.union(
                    [matcher.key_of(s, a) for s, a, _ in runnable], [q for *_, q in runnable]
                )
                found = matcher.run(session, stmt, chunk) if runnable else []
        except Exception:  # one subscription's criteria no longer run: find it, keep the others
            found = []
            for sub, _access, query in list(runnable):
                try:
                    with session.begin_nested():
                        found += matcher.run(session, query, chunk)
                except Exception as exc:
                    runnable = [r for r in runnable if r[0] is not sub]
                    _broken(session, sub, exc)
        for sub_id, res_id in found:
            hits[sub_id].add(res_id)
    if gone:
        for sub, _access, _query in runnable:
            hits[sub.sub_id] |= store.notified_before(session, sub.sub_id, sub.criteria_type, gone)
    return hits


def _broken(session: Session, sub: Any, exc: BaseException) -> None:
    """Criteria that no longer run (a parameter gone): said, not silent."""
    log.warning("subscription %s: its criteria failed (%s); set to error", sub.sub_id, type(exc).__name__)
    status.set_status(session, sub.sub_id, "error", CRITERIA_FAILED)
