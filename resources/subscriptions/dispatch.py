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
from urllib.parse import parse_qsl

from sqlalchemy.orm import Session

from fhir_api import db
from resources.search.results import match_ids
from resources.subscriptions import status, store
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
        subscriptions = store.live(session, sorted(by_type))
        now = db.now()
        rows: list[dict[str, Any]] = []
        for sub in subscriptions:
            if sub.end is not None and sub.end <= now:  # Subscription.end: switched off, as the spec says
                status.set_status(session, sub.sub_id, "off", None)
                continue
            mine = by_type.get(sub.criteria_type, [])
            if not mine:
                continue
            matched = _matching(session, sub, mine)
            if not matched:
                continue
            for c in matched:
                event = "delete" if c.deleted else ("create" if c.version == 1 else "update")
                rows.append(
                    {
                        "sub_id": sub.sub_id,
                        "event_number": sub.next_seq,
                        "res_type": c.res_type,
                        "res_id": c.res_id,
                        "version": c.version,
                        "event": event,
                        "replay": False,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt": now,
                        "created": now,
                    }
                )
                sub.next_seq += 1
            if sub.due is None:
                sub.due = now
        store.enqueue(session, rows)
        store.forget_changes(session, [c.seq for c in changes])
        return len(changes)


def _matching(session: Session, sub: Any, changes: list[Any]) -> list[Any]:
    """The changes this subscription is notified of, in outbox order."""
    access = access_of(session, sub)
    if access is None:  # nothing is matched for a client that may no longer read anything
        if sub.status == "active":
            status.set_status(session, sub.sub_id, "error", DISABLED)
        return []
    criteria = parse_qsl(sub.criteria, keep_blank_values=True)
    live_ids = sorted({c.res_id for c in changes if not c.deleted})
    hits: set[str] = set()
    for i in range(0, len(live_ids), _CHUNK):
        chunk = live_ids[i : i + _CHUNK]
        try:
            with session.begin_nested():  # a failing search must not abort the whole batch's transaction
                found = match_ids(
                    session, sub.criteria_type, [*criteria, ("_id", ",".join(chunk))], len(chunk), access
                )
            hits.update(found)
        except Exception as exc:  # criteria that no longer run (a parameter gone): said, not silent
            log.warning(
                "subscription %s: its criteria failed (%s); set to error", sub.sub_id, type(exc).__name__
            )
            status.set_status(session, sub.sub_id, "error", CRITERIA_FAILED)
            return []
    gone = [c.res_id for c in changes if c.deleted]
    if gone:
        hits.update(store.notified_before(session, sub.sub_id, sub.criteria_type, gone))
    # a resource written twice in the batch is matched on its current content: each version counts
    return [c for c in changes if c.res_id in hits]
