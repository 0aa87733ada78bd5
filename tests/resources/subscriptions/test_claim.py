"""Leasing the subscriptions with events due: earliest first, one owner at a time, never a live lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select

from fhir_api import db
from resources.subscriptions import store
from resources.subscriptions.models import SubscriptionState

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def _state(sub_id: str, *, due: datetime | None, status: str = "active", lease_until: datetime | None = None):
    return {
        "sub_id": sub_id, "owner": "c", "principal": "{}", "status": status, "criteria_type": "Patient",
        "criteria": "", "endpoint": "https://example.org/hook", "content": "id-only", "data_key": "k",
        "secret": "s", "next_seq": 1, "failures": 0, "due": due, "created": NOW,
        "lease_owner": "someone" if lease_until else None, "lease_until": lease_until,
    }  # fmt: skip


@pytest.fixture
def states(app):
    rows = [
        _state("later", due=NOW - timedelta(seconds=1)),
        _state("first", due=NOW - timedelta(seconds=30)),
        _state("not-yet", due=NOW + timedelta(seconds=5)),
        _state("idle", due=None),
        _state("off", due=NOW - timedelta(seconds=60), status="off"),
        _state("leased", due=NOW - timedelta(seconds=60), lease_until=NOW + timedelta(seconds=10)),
        _state("lease-over", due=NOW - timedelta(seconds=2), status="error", lease_until=NOW - timedelta(1)),
    ]
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        s.execute(insert(SubscriptionState), rows)
    return app


def _claim(app, owner: str, limit: int = 8) -> list[str]:
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        return store.claim(s, owner, NOW, LEASE, limit)


def test_claim_leases_what_is_due_earliest_first(states):
    assert _claim(states, "w1", limit=2) == ["first", "lease-over"]
    assert _claim(states, "w2") == ["later"]  # the others are leased to w1 now
    assert _claim(states, "w3") == []
    with states.app_context(), db.new_session() as s:
        leases = dict(s.execute(select(SubscriptionState.sub_id, SubscriptionState.lease_owner)).all())
        until = s.execute(
            select(SubscriptionState.lease_until).where(SubscriptionState.sub_id == "first")
        ).scalar_one()
    assert leases == {
        "first": "w1", "lease-over": "w1", "later": "w2",
        "not-yet": None, "idle": None, "off": None, "leased": "someone",
    }  # fmt: skip
    assert until == NOW + LEASE


def test_claim_skips_rows_another_transaction_holds(states):
    with states.app_context(), db.new_session() as holder:
        if holder.connection().dialect.name != "postgresql":
            pytest.skip("SQLite has one writer at a time")
        holder.execute(
            select(SubscriptionState.sub_id).where(SubscriptionState.sub_id == "first").with_for_update()
        ).all()
        assert _claim(states, "w1") == ["lease-over", "later"]  # not waiting for the lock on "first"
        holder.rollback()
    assert _claim(states, "w2") == ["first"]
