"""Subscriptions through the API: what may be subscribed to, by whom, what is stored, the log, replay,
secret rotation, payload shapes, and who never receives what."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from audit.models import AuditRow
from fhir_api import db
from resources import subscriptions
from resources.subscriptions import definition, signing
from tests.helpers import authorized_client, created_id, issue
from tests.resources.subscriptions.conftest import pump, register
from tests.resources.subscriptions.test_delivery import observation, subscription

BASE = "/fhir/R4"


def _create(client, body):
    resp = client.post(f"{BASE}/Subscription", json=body)
    assert resp.status_code == 201, resp.get_json()
    return created_id(resp), resp.headers["X-Subscription-Secret"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"channel": {"type": "websocket", "endpoint": "http://127.0.0.1/x"}}, "Subscription.channel.type"),
        ({"criteria": "Observation?no-such-param=1"}, "Subscription.criteria"),
        ({"criteria": "https://example.org/topic"}, "Subscription.criteria"),
        ({"criteria": "Observation?_count=5"}, "Subscription.criteria"),
        (
            {
                "channel": {
                    "type": "rest-hook",
                    "endpoint": "ftp://x.example/y",
                    "payload": "application/fhir+json",
                }
            },
            "Subscription.channel.endpoint",
        ),
        (
            {"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x", "payload": "text/plain"}},
            "Subscription.channel.payload",
        ),
        (
            {
                "channel": {
                    "type": "rest-hook",
                    "endpoint": "http://127.0.0.1:9/x",
                    "header": ["X-Signature: x"],
                }
            },
            "Subscription.channel.header",
        ),
    ],
)
def test_refused_subscriptions_say_why(subscriber, change, where):
    body = {**subscription("http://127.0.0.1:9/x"), **change}
    resp = subscriber.post(f"{BASE}/Subscription", json=body)
    assert resp.status_code == 422, resp.get_json()
    assert issue(resp)["expression"] == [where]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://hooks.example.org/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest",
        "https://localhost/x",
    ],
)
def test_private_or_plain_http_endpoints_are_refused_unless_allowed(app, subscriber, endpoint):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = False
    resp = subscriber.post(f"{BASE}/Subscription", json=subscription(endpoint))
    assert resp.status_code == 422
    assert issue(resp)["expression"] == ["Subscription.channel.endpoint"]


def test_delivery_checks_the_resolved_address_every_time(app, subscriber, receiver, monkeypatch):
    """A public name that resolves to a private address at delivery time is never called, nor retried."""
    import socket

    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = False
    sub_id, _ = _create(subscriber, subscription("https://hooks.example.org/in"))
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 443))],
    )
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app, rounds=5, allow_private=False)
    log = subscriber.get(f"{BASE}/Subscription/{sub_id}/$events").get_json()
    event = next(p for p in log["parameter"] if p["name"] == "notification-event")
    attempt = next(p for p in event["part"] if p["name"] == "attempt")
    error = {q["name"]: q for q in attempt["part"]}["error"]["valueString"]
    assert "private, loopback or link-local" in error
    parts = {p["name"]: p for p in event["part"]}
    assert parts["delivery-status"]["valueCode"] == "failed" and parts["attempts"]["valueInteger"] == 1


def test_stored_subscription_is_active_and_keeps_no_header_value(subscriber, receiver, app):
    body = subscription(receiver.url, header=["Authorization: Bearer s3cret-token"])
    sub_id, _ = _create(subscriber, body)
    stored = subscriber.get(f"{BASE}/Subscription/{sub_id}")
    assert "X-Subscription-Secret" not in stored.headers  # shown once, at creation
    resource = stored.get_json()
    assert resource["status"] == "active"
    assert resource["channel"]["header"] == [f"Authorization: {definition.REDACTED}"]
    with app.app_context(), db.new_session() as session:
        from resources.models import ResourceVersion
        from resources.subscriptions.models import SubscriptionState

        assert "s3cret" not in " ".join(session.execute(select(ResourceVersion.body)).scalars())
        assert "s3cret" not in (session.get(SubscriptionState, sub_id).headers or "")
    # an update that sends the redacted value back keeps the header the receiver expects
    resource["reason"] = "changed"
    assert subscriber.put(f"{BASE}/Subscription/{sub_id}", json=resource).status_code == 200
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    assert receiver.received[0][0]["Authorization"] == "Bearer s3cret-token"


def test_only_the_owner_sees_or_changes_a_subscription(app, subscriber, receiver):
    sub_id, _ = _create(subscriber, subscription(receiver.url))
    register(app, "other-sub", "clinical-system", "system/*.cruds")
    other = authorized_client(app, client_id="other-sub", scope="system/*.cruds")
    assert other.get(f"{BASE}/Subscription/{sub_id}").status_code == 404
    assert not other.get(f"{BASE}/Subscription").get_json().get("entry")
    assert other.get(f"{BASE}/Subscription/{sub_id}/$events").status_code == 404
    assert other.post(f"{BASE}/Subscription/{sub_id}/$rotate-secret").status_code == 404
    assert other.delete(f"{BASE}/Subscription/{sub_id}").status_code == 404
    assert len(subscriber.get(f"{BASE}/Subscription").get_json()["entry"]) == 1


def test_an_insurer_is_told_only_of_its_members_claims(app, receiver):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = True
    admin = authorized_client(app)
    for org in ("ins-a", "ins-b"):
        admin.put(f"{BASE}/Organization/{org}", json={"resourceType": "Organization", "id": org, "name": org})
    for pid, org in (("member", "ins-a"), ("stranger", "ins-b")):
        admin.put(f"{BASE}/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        admin.put(
            f"{BASE}/Coverage/cov-{pid}",
            json={
                "resourceType": "Coverage",
                "id": f"cov-{pid}",
                "status": "active",
                "beneficiary": {"reference": f"Patient/{pid}"},
                "payor": [{"reference": f"Organization/{org}"}],
            },
        )
    scope = "system/*.rs system/Subscription.cruds"
    register(app, "insurer-a", "insurer", scope, organization="Organization/ins-a")
    insurer = authorized_client(app, client_id="insurer-a", role="insurer", scope=scope, organization="ins-a")
    refused = insurer.post(
        f"{BASE}/Subscription", json=subscription(receiver.url, "Observation?status=final")
    )
    assert refused.status_code == 422  # outside what an insurer may read at all
    _create(insurer, subscription(receiver.url, "Claim?status=active"))

    def claim(pid: str) -> str:
        body = {
            "resourceType": "Claim",
            "status": "active",
            "type": {"coding": [{"code": "institutional"}]},
            "use": "claim",
            "patient": {"reference": f"Patient/{pid}"},
            "created": "2024-01-01",
            "provider": {"reference": "Organization/ins-a"},
            "priority": {"coding": [{"code": "normal"}]},
            "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{pid}"}}],
        }
        resp = admin.post(f"{BASE}/Claim", json=body)
        assert resp.status_code == 201, resp.get_json()
        return created_id(resp)

    mine = claim("member")
    claim("stranger")
    pump(app)
    focus = [b["entry"][1]["resource"] for b in receiver.bodies()]
    assert [r["id"] for r in focus] == [mine]
    assert "stranger" not in json.dumps(receiver.bodies())


def test_nothing_is_sent_once_the_owner_may_no_longer_read(app, subscriber, receiver):
    sub_id, _ = _create(subscriber, subscription(receiver.url))
    from fhir_api.auth.models import AuthClient

    # A writer transaction from the start: on SQLite a read-then-write transaction fails at once
    # ("database is locked") when a background thread committed between the read and the write.
    with app.app_context(), db.new_session() as session, db.write_transaction(session):
        session.get(AuthClient, "hospital-sub").disabled = True
    authorized_client(app).post(f"{BASE}/Observation", json=observation())
    pump(app, rounds=5)
    assert receiver.received == []
    with app.app_context(), db.new_session() as session:
        from resources.subscriptions.models import SubscriptionState

        state = session.get(SubscriptionState, sub_id)
        assert state.status == "error" and "disabled" in state.error


def test_replay_one_event_or_every_event_since(app, subscriber, receiver):
    sub_id, _ = _create(subscriber, subscription(receiver.url))
    for _ in range(3):
        subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    resp = subscriber.post(
        f"{BASE}/Subscription/{sub_id}/$replay",
        json={"resourceType": "Parameters", "parameter": [{"name": "eventNumber", "valueInteger": 2}]},
    )
    assert resp.status_code == 202, resp.get_json()
    pump(app)
    assert [h["X-Event-Number"] for h, _ in receiver.received] == ["1", "2", "3", "2"]
    assert receiver.received[-1][0]["X-Replay"] == "true"
    resp = subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay?since=2000-01-01")
    assert resp.get_json()["parameter"][0]["valueInteger"] == 3
    pump(app)
    assert [h["X-Event-Number"] for h, _ in receiver.received][4:] == ["1", "2", "3"]
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay?eventNumber=99").status_code == 404
    assert subscriber.post(f"{BASE}/Subscription/{sub_id}/$replay").status_code == 400


def test_rotated_secret_signs_next_to_the_old_one_for_a_while(app, subscriber, receiver):
    sub_id, old = _create(subscriber, subscription(receiver.url))
    resp = subscriber.post(f"{BASE}/Subscription/{sub_id}/$rotate-secret")
    assert resp.status_code == 200
    new = resp.get_json()["parameter"][0]["valueString"]
    assert new != old
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    headers, body = receiver.received[0]
    for secret in (new, old):
        assert signing.verify(secret, headers["X-Timestamp"], headers["X-Signature"], body)
    assert not signing.verify("whsec_wrong", headers["X-Timestamp"], headers["X-Signature"], body)
    assert not signing.verify(new, str(int(headers["X-Timestamp"]) - 3600), headers["X-Signature"], body)


def test_payload_shapes_empty_id_only_full(app, subscriber, receiver):
    empty = subscription(receiver.url)
    del empty["channel"]["payload"]
    id_only = subscription(receiver.url)
    id_only["channel"]["_payload"] = {
        "extension": [{"url": definition.PAYLOAD_CONTENT, "valueCode": "id-only"}]
    }
    _create(subscriber, empty)
    _create(subscriber, id_only)
    obs = created_id(subscriber.post(f"{BASE}/Observation", json=observation()))
    pump(app)
    shapes = sorted(len(b["entry"]) for b in receiver.bodies())
    assert shapes == [1, 2]
    for bundle in receiver.bodies():
        assert bundle["type"] == "history"
        assert (
            "resource" not in bundle["entry"][-1]
            or bundle["entry"][-1]["resource"]["resourceType"] == "Parameters"
        )
        if len(bundle["entry"]) == 2:
            assert bundle["entry"][1]["fullUrl"].endswith(f"/Observation/{obs}")


def test_a_deleted_resource_is_an_event_for_those_told_of_it(app, subscriber, receiver):
    _create(subscriber, subscription(receiver.url))
    obs = created_id(subscriber.post(f"{BASE}/Observation", json=observation()))
    pump(app)
    assert subscriber.delete(f"{BASE}/Observation/{obs}").status_code in (200, 204)
    other = created_id(subscriber.post(f"{BASE}/Observation", json=observation(code="1234-5")))
    subscriber.delete(f"{BASE}/Observation/{other}")
    pump(app)
    methods = [b["entry"][1]["request"]["method"] for b in receiver.bodies()]
    assert methods == ["POST", "DELETE"]
    assert "resource" not in receiver.bodies()[1]["entry"][1]


def test_every_attempt_and_subscription_change_is_audited(app, subscriber, receiver):
    receiver.answers = [500, 200]
    sub_id, _ = _create(subscriber, subscription(receiver.url))
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app)
    with app.app_context(), db.new_session() as session:
        rows = (
            session.execute(select(AuditRow.body).where(AuditRow.subtype == "subscription-notification"))
            .scalars()
            .all()
        )
        creates = (
            session.execute(
                select(AuditRow.body).where(
                    AuditRow.subtype == "create", AuditRow.body.contains(f"Subscription/{sub_id}")
                )
            )
            .scalars()
            .all()
        )
    attempts = [json.loads(r) for r in rows if f"Subscription/{sub_id}" in r]
    assert sorted(e["outcome"] for e in attempts) == ["0", "8"]
    assert len(creates) == 1


def test_criteria_the_subscriber_may_not_search_are_refused(app, receiver):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = True
    scope = "system/Patient.rs system/Subscription.cruds"
    register(app, "narrow-sub", "clinical-system", scope)
    narrow = authorized_client(app, client_id="narrow-sub", scope=scope)
    resp = narrow.post(f"{BASE}/Subscription", json=subscription(receiver.url))
    assert resp.status_code == 422
    assert "may not search Observation" in issue(resp)["diagnostics"]
    assert narrow.post(f"{BASE}/Subscription", json=subscription(receiver.url, "Patient?")).status_code == 201


def test_allow_private_written_as_false_keeps_the_protection(app, subscriber):
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = "False"  # as FHIR_SUBSCRIPTION_ALLOW_PRIVATE=False arrives
    resp = subscriber.post(f"{BASE}/Subscription", json=subscription("http://127.0.0.1:9/x"))
    assert resp.status_code == 422


def test_each_subscription_of_a_bundle_gets_its_own_secret(subscriber, receiver):
    entries = [
        {
            "fullUrl": f"urn:uuid:{n}",
            "resource": subscription(receiver.url),
            "request": {"method": "POST", "url": "Subscription"},
        }
        for n in ("3f0c1a52-0000-4000-8000-000000000001", "3f0c1a52-0000-4000-8000-000000000002")
    ]
    resp = subscriber.post(BASE, json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200, resp.get_json()
    ids = [e["response"]["location"].split("/")[1] for e in resp.get_json()["entry"]]
    pairs = dict(p.split("=", 1) for p in resp.headers["X-Subscription-Secrets"].split(", "))
    assert sorted(pairs) == sorted(ids) and len(set(pairs.values())) == 2
    assert "X-Subscription-Secret" not in resp.headers


def test_no_event_is_taken_that_could_outlive_the_lease(app, subscriber, receiver):
    from datetime import timedelta

    _create(subscriber, subscription(receiver.url))
    subscriber.post(f"{BASE}/Observation", json=observation())
    pump(app, rounds=3, lease=timedelta(seconds=5), timeout=10)  # lease shorter than one attempt could take
    assert receiver.received == []
    pump(app)
    assert len(receiver.received) == 1


def test_the_capability_statement_declares_subscriptions(anonymous):
    statement = anonymous.get(f"{BASE}/metadata").get_json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    assert {"name": "events", "definition": subscriptions.EVENTS} in entry["operation"]
    assert "rest-hook" in entry["documentation"]
