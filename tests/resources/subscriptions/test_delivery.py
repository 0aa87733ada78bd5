"""Subscriptions end to end in one process: create, match, sign, deliver, retry, error, recover."""

from __future__ import annotations

import json

from resources.subscriptions import signing
from tests.helpers import created_id
from tests.resources.subscriptions.conftest import pump

FHIR = "application/fhir+json"


def subscription(endpoint: str, criteria: str = "Observation?code=http://loinc.org|8867-4", **channel):
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": FHIR, **channel},
    }


def observation(code: str = "8867-4", patient: str | None = None):
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }
    if patient:
        body["subject"] = {"reference": f"Patient/{patient}"}
    return body


def test_matching_writes_arrive_signed_in_order(app, subscriber, receiver):
    resp = subscriber.post("/fhir/R4/Subscription", json=subscription(receiver.url))
    assert resp.status_code == 201, resp.get_json()
    secret = resp.headers["X-Subscription-Secret"]
    sub_id = created_id(resp)
    assert subscriber.get(f"/fhir/R4/Subscription/{sub_id}").get_json()["status"] == "active"

    wanted = [created_id(subscriber.post("/fhir/R4/Observation", json=observation())) for _ in range(3)]
    subscriber.post("/fhir/R4/Observation", json=observation(code="1234-5"))  # not matching
    pump(app)

    assert len(receiver.received) == 3
    numbers = []
    for headers, body in receiver.received:
        assert signing.verify(secret, headers["X-Timestamp"], headers["X-Signature"], body)
        bundle = json.loads(body)
        status = bundle["entry"][0]["resource"]
        numbers.append(int(headers["X-Event-Number"]))
        assert status["resourceType"] == "Parameters"
        assert bundle["entry"][1]["resource"]["resourceType"] == "Observation"
    assert numbers == [1, 2, 3]
    assert [json.loads(b)["entry"][1]["resource"]["id"] for _, b in receiver.received] == wanted


def test_receiver_down_then_up_gets_everything_once_in_order(app, subscriber, receiver):
    receiver.answers = [503, 503, 503, 200]
    sub_id = created_id(subscriber.post("/fhir/R4/Subscription", json=subscription(receiver.url)))
    for _ in range(4):
        subscriber.post("/fhir/R4/Observation", json=observation())
    pump(app, rounds=60)
    numbers = [int(h["X-Event-Number"]) for h, _ in receiver.received]
    assert numbers == [1, 2, 3, 4]
    log = subscriber.get(f"/fhir/R4/Subscription/{sub_id}/$events").get_json()
    events = [p for p in log["parameter"] if p["name"] == "notification-event"]
    first = {p["name"]: p for p in events[0]["part"]}
    assert first["delivery-status"]["valueCode"] == "delivered"
    assert first["attempts"]["valueInteger"] == 4
    codes = [
        {q["name"]: q for q in a["part"]}["status-code"]["valueInteger"]
        for a in events[0]["part"]
        if a["name"] == "attempt"
    ]
    assert codes == [503, 503, 503, 200]


def test_receiver_gone_for_good_ends_in_error(app, subscriber, receiver):
    receiver.answers = [503]
    sub_id = created_id(subscriber.post("/fhir/R4/Subscription", json=subscription(receiver.url)))
    subscriber.post("/fhir/R4/Observation", json=observation())
    pump(app, rounds=40, max_failures=3)
    sub = subscriber.get(f"/fhir/R4/Subscription/{sub_id}").get_json()
    assert sub["status"] == "error"
    assert "3 consecutive deliveries failed" in sub["error"]
    # the endpoint comes back: the next retry succeeds and the subscription is active again
    receiver.answers = [200]
    pump(app, rounds=40, max_failures=3)
    assert subscriber.get(f"/fhir/R4/Subscription/{sub_id}").get_json()["status"] == "active"
    assert len(receiver.received) == 1


def test_one_dispatcher_at_a_time_on_postgresql(app, subscriber, receiver):
    import pytest
    from sqlalchemy import text

    from fhir_api import db
    from resources.subscriptions import store
    from resources.subscriptions.dispatch import dispatch_once

    with app.app_context(), db.new_session() as other:
        if other.get_bind().dialect.name != "postgresql":
            pytest.skip("PostgreSQL only: SQLite has one writer anyway")
        subscriber.post("/fhir/R4/Subscription", json=subscription(receiver.url))
        subscriber.post("/fhir/R4/Observation", json=observation())
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": store._DISPATCHER_LOCK})
        try:
            with db.new_session() as session:
                assert dispatch_once(session) == 0  # the other holds it: nothing taken, nothing numbered
        finally:
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": store._DISPATCHER_LOCK})
        with db.new_session() as session:
            assert dispatch_once(session) == 1


def test_one_process_matches_and_another_takes_over_when_it_goes(app):
    import pytest

    from fhir_api import db
    from resources.subscriptions.store import Leadership

    with app.app_context():
        engine = db.engine()
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite serves one process")
    first, second = Leadership(engine), Leadership(engine)
    try:
        assert first.held() and first.held()
        assert not second.held()
        first.release()  # the leader's process ends (its connection closes)
        second.next_try = 0.0
        assert second.held()
    finally:
        first.release()
        second.release()


def test_processes_that_do_not_match_poll_four_times_less_often_when_idle(app, monkeypatch):
    """The matching process sends what it matched in the same round; the others, there to share a heavy
    load, look every FOLLOWER_POLLS intervals while nothing is due (an idle server's polls: 4 + n - 1 a
    second, not 4 n)."""
    import threading
    import time

    import pytest

    from fhir_api import db
    from resources.subscriptions import delivery
    from resources.subscriptions.store import Leadership

    with app.app_context():
        engine = db.engine()
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite serves one process, which always matches")
    app.config["SUBSCRIPTION_POLL_SECONDS"] = 0.05
    polls: list[float] = []
    monkeypatch.setattr(delivery, "deliver_once", lambda *_a, **_k: polls.append(time.monotonic()) or 0)

    def polls_in(seconds: float) -> int:
        polls.clear()
        worker = delivery.Worker(app)
        thread = threading.Thread(target=worker.run_here, daemon=True)
        thread.start()
        time.sleep(seconds)
        worker.stop_event.set()
        thread.join(5)
        return len(polls)

    other = Leadership(engine)
    try:
        assert other.held() and other.leads()  # another process matches
        follower = polls_in(1.0)
    finally:
        other.release()
    assert not other.leads()
    leader = polls_in(1.0)  # this one takes the lock at its first poll
    assert follower <= 1.0 / (delivery.FOLLOWER_POLLS * 0.05) + 2  # every 0.2 s: about 5
    assert leader >= 12  # every 0.05 s: about 20
