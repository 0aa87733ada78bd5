"""What a careless or hostile subscriber must not get: another user's subscription through a shared app,
a deletion or a log entry about what it may no longer read, a 500 from odd input, a stuck worker, a
private address by another spelling, a secret stored without its audit record."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from fhir_api import create_app, outbound
from resources.subscriptions.delivery import post
from tests.helpers import authorized_client, created_id, fresh_database, issue, refuse_audit_inserts
from tests.resources.subscriptions.conftest import pump, register
from tests.resources.subscriptions.test_delivery import observation, subscription
from tests.resources.subscriptions.test_outbound import settings

BASE = "/fhir/R4"


def test_apps_signed_in_for_a_user_cannot_own_subscriptions(app, receiver):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = True
    scope = "user/*.cruds"
    register(app, "shared-app", "clinician", scope)
    clinician = authorized_client(
        app, client_id="shared-app", role="clinician", scope=scope, fhir_user="Practitioner/p1"
    )
    resp = clinician.post(f"{BASE}/Subscription", json=subscription(receiver.url))
    assert resp.status_code == 403
    assert "backend clients" in issue(resp)["diagnostics"]


def _insurer_world(app, receiver):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = True
    admin = authorized_client(app)
    admin.put(f"{BASE}/Organization/ins-a", json={"resourceType": "Organization", "id": "ins-a"})
    admin.put(f"{BASE}/Patient/member", json={"resourceType": "Patient", "id": "member"})
    coverage = {
        "resourceType": "Coverage",
        "id": "cov-member",
        "status": "active",
        "beneficiary": {"reference": "Patient/member"},
        "payor": [{"reference": "Organization/ins-a"}],
    }
    admin.put(f"{BASE}/Coverage/cov-member", json=coverage)
    scope = "system/*.rs system/Subscription.cruds"
    register(app, "insurer-a", "insurer", scope, organization="Organization/ins-a")
    insurer = authorized_client(app, client_id="insurer-a", role="insurer", scope=scope, organization="ins-a")
    resp = insurer.post(f"{BASE}/Subscription", json=subscription(receiver.url, "Patient?"))
    assert resp.status_code == 201, resp.get_json()
    return admin, insurer, created_id(resp)


def test_no_deletion_or_log_entry_about_what_the_subscriber_may_no_longer_read(app, receiver):
    admin, insurer, sub_id = _insurer_world(app, receiver)
    admin.put(f"{BASE}/Patient/member", json={"resourceType": "Patient", "id": "member", "gender": "other"})
    pump(app)
    assert len(receiver.received) == 1  # the member's update
    admin.delete(f"{BASE}/Coverage/cov-member")  # no longer a member
    admin.delete(f"{BASE}/Patient/member")
    pump(app)
    assert len(receiver.received) == 1  # no DELETE notification about a non-member
    log = insurer.get(f"{BASE}/Subscription/{sub_id}/$events").get_json()
    events = [p for p in log["parameter"] if p["name"] == "notification-event"]
    assert events and all(not any(q["name"] == "focus" for q in e["part"]) for e in events)
    assert "member" not in str(log)


@pytest.mark.parametrize(
    "query",
    [
        "_count=²",
        "eventsUntilNumber=²",
        "eventsSinceNumber=99999999999999999999999",
        "_count=0",
        "_count=1&_count=2",
    ],
)
def test_odd_numbers_in_the_log_query_are_400(subscriber, receiver, query):
    sub_id = created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    resp = subscriber.get(f"{BASE}/Subscription/{sub_id}/$events?{query}")
    assert resp.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Parameters", "parameter": {"name": "eventNumber"}},
        {"resourceType": "Parameters", "parameter": ["x"]},
        {"resourceType": "Parameters", "parameter": [{"name": "eventNumber", "valueInteger": 10**25}]},
        {"resourceType": "Parameters", "parameter": [{"name": "eventNumber", "valueString": "²"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "since", "valueString": "yesterday"}]},
        {"resourceType": "Patient"},
    ],
)
def test_malformed_replay_requests_are_400(subscriber, receiver, body):
    sub_id = created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay", json=body).status_code == 400


@pytest.mark.parametrize(
    "channel",
    [
        {"endpoint": "http://[::1/x"},
        {"endpoint": "http://127.0.0.1:99999/x"},
        {"endpoint": "https://hooks.example.org/" + "x" * 3000},
        {"endpoint": "http://127.0.0.1:9/x", "header": ["X-Key: a\x00b"]},
    ],
)
def test_odd_channels_are_refused_not_500(subscriber, channel):
    body = subscription("http://127.0.0.1:9/x")
    body["channel"] = {**body["channel"], **channel}
    resp = subscriber.post(f"{BASE}/Subscription", json=body)
    assert resp.status_code in (400, 422), resp.get_json()


def test_parameters_after_the_payload_mime_type_are_ignored(subscriber):
    body = subscription("http://127.0.0.1:9/x")
    body["channel"]["payload"] = "application/fhir+json; charset=utf-8; x=" + "y" * 100
    assert subscriber.post(f"{BASE}/Subscription", json=body).status_code == 201


def test_end_that_is_not_an_instant_is_refused(subscriber):
    body = {**subscription("http://127.0.0.1:9/x"), "end": 5}
    assert subscriber.post(f"{BASE}/Subscription", json=body).status_code in (400, 422)


def test_replay_is_refused_when_off_or_while_a_replay_is_pending(app, subscriber, receiver):
    sub_id = created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay?eventNumber=1").status_code == 202
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay?eventNumber=1").status_code == 409
    pump(app)
    stored = subscriber.get(f"{BASE}/Subscription/{sub_id}").get_json()
    subscriber.put(f"{BASE}/Subscription/{sub_id}", json={**stored, "status": "off"})
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay?eventNumber=1").status_code == 409


def test_another_clients_subscription_history_is_unknown(app, subscriber, receiver):
    sub_id = created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    register(app, "other-sub", "clinical-system", "system/*.cruds")
    other = authorized_client(app, client_id="other-sub", scope="system/*.cruds")
    assert other.get(f"{BASE}/Subscription/{sub_id}/_history").status_code == 404
    subscriber.delete(f"{BASE}/Subscription/{sub_id}")
    body = {**subscription(receiver.url), "id": sub_id}
    assert other.put(f"{BASE}/Subscription/{sub_id}", json=body).status_code == 404


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("fec0::1", False),
        ("fd00::1", False),
        ("2606:4700:4700::1111", True),
        ("100.64.0.1", False),
        ("93.184.216.34", True),
    ],
)
def test_private_addresses_in_every_spelling(address, ok):
    assert outbound.public(ipaddress.ip_address(address)) is ok


def test_a_receiver_that_trickles_its_answer_cannot_hold_the_worker():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def tarpit() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.is_set():  # one header line every 0.2 s, for ever
            try:
                conn.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=tarpit, daemon=True).start()
    s = settings(timeout=0.5)
    started = time.monotonic()
    outcome = post(f"http://127.0.0.1:{server.getsockname()[1]}/in", b"{}", {}, s)
    took = time.monotonic() - started
    stop.set()
    server.close()
    assert not outcome.delivered and outcome.retryable
    assert took < 2.0


def test_a_rotated_secret_is_kept_only_with_its_audit_record(tmp_path, receiver):
    with fresh_database(tmp_path, "rotate") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True, "SUBSCRIPTION_ALLOW_PRIVATE": True})
        register(app, "hospital-sub", "clinical-system", "system/*.cruds")
        client = authorized_client(app, client_id="hospital-sub", scope="system/*.cruds")
        sub_id = created_id(client.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
        from fhir_api import db
        from resources.subscriptions.models import SubscriptionState

        with app.app_context(), db.new_session() as session:
            before = session.get(SubscriptionState, sub_id).secret
        refuse_audit_inserts(app)
        assert client.post(f"{BASE}/Subscription/{sub_id}/$rotate-secret").status_code == 503
        with app.app_context(), db.new_session() as session:
            assert session.get(SubscriptionState, sub_id).secret == before
        app.extensions["fhir_db"]["engine"].dispose()


def test_criteria_that_stop_working_set_error_and_spare_the_others(app, subscriber, receiver):
    broken = created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    created_id(subscriber.post(f"{BASE}/Subscription", json=subscription(receiver.url)))
    from fhir_api import db
    from resources.subscriptions.models import SubscriptionState

    # as if a search parameter had been withdrawn (a writer transaction first: see test_subscription_api)
    with app.app_context(), db.new_session() as session, db.write_transaction(session):
        session.get(SubscriptionState, broken).criteria = "no-such-param=1"
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    assert [h["X-Subscription-Id"] for h, _ in receiver.received] != []
    assert broken not in [h["X-Subscription-Id"] for h, _ in receiver.received]
    resource = subscriber.get(f"{BASE}/Subscription/{broken}").get_json()
    assert resource["status"] == "error" and "criteria" in resource["error"]
