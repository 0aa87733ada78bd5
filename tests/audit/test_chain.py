"""The chain's own rules: canonical JSON is RFC 8785, links are gap-free, and an event that commits late
(a long transaction holding an earlier ``pos``) is chained when it commits, never skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import rfc8785
from sqlalchemy import text

from audit.chain import GENESIS, catch_up, extend, link_hash
from audit.events import Actor, Event, canonical
from audit.signing import app_key, derive_mac_key, public_key
from audit.store import event_batch
from audit.verify import verify
from fhir_api import create_app
from fhir_api.db import execute_batch
from tests.helpers import authorized_client, fresh_database, patient

TRICKY = [
    {"b": 1, "a": [True, False, None], "é": "naïve", "z": {"y": "\u2028", "x": '\x1f\t\n"\\'}},
    {"emoji": "😀", "日本": "語", "": "", "num": -0, "big": 9007199254740991},
    {"desc": "</script><b>", "ctl": "".join(chr(c) for c in range(0, 32)), "del": "\x7f"},
]


@pytest.mark.parametrize("value", TRICKY)
def test_canonical_is_rfc8785(value):
    assert canonical(value).encode() == rfc8785.dumps(value)


def _python_canonical(value):
    """What ``canonical`` wrote before orjson (events written then are re-serialised by export checks)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_canonical_writes_every_code_point_as_json_dumps_did():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    chunks = ["".join(chars[i : i + 4096]) for i in range(0, len(chars), 4096)]
    value = {f"k{i:03}{chunk[:2]}": {"s": chunk, "n": [i, -i, None, True]} for i, chunk in enumerate(chunks)}
    assert canonical(value) == _python_canonical(value)


@pytest.mark.parametrize(
    "value",
    [{1: "a", 2: "b"}, {"big": 2**64}, {"x": {"y": [-(2**70)]}}],
    ids=["non-string key", "integer beyond 64 bits", "nested big integer"],
)
def test_canonical_falls_back_to_json_dumps_for_what_orjson_refuses(value):
    assert canonical(value) == _python_canonical(value)


def test_recorded_events_are_rfc8785(app, client):
    client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": "application/fhir+json"})
    client.get("/fhir/R4/Patient?family=Ünïcödé&_count=1")
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        bodies = [b for (b,) in conn.execute(text("SELECT body FROM audit_event ORDER BY pos DESC LIMIT 20"))]
    assert bodies
    for body in bodies:
        assert rfc8785.dumps(json.loads(body)).decode() == body


def test_link_hash_binds_previous_hash_position_and_content():
    base = link_hash(GENESIS, 1, '{"a":1}')
    assert base != link_hash(GENESIS, 2, '{"a":1}')
    assert base != link_hash("f" * 64, 1, '{"a":1}')
    assert base != link_hash(GENESIS, 1, '{"a":2}')
    assert base == link_hash(GENESIS, 1, '{"a":1}')


def _event(n: int) -> Event:
    return Event(
        type={"system": "urn:test", "code": "rest"},
        subtype={"system": "urn:test", "code": "read"},
        action="R",
        recorded=datetime.now(UTC),
        actor=Actor(client_id=f"client-{n}", address="127.0.0.1"),
        server="test",
    )


def test_late_commit_is_chained_not_skipped(tmp_path):
    """A writer holds an earlier ``pos`` open while a later one commits and the chainer runs: the chainer
    must wait for it (PostgreSQL: xmin horizon), then chain both. SQLite serialises writers, so there the
    same sequence simply cannot interleave."""
    with fresh_database(tmp_path, "latecommit") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        engine = app.extensions["fhir_db"]["engine"]
        key = app_key(app)
        mac = derive_mac_key(key)
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite writers never interleave")
        from sqlalchemy.orm import Session

        slow, fast = Session(engine), Session(engine)
        with app.app_context():
            execute_batch(slow, event_batch([_event(1)], mac))  # pos 1, not committed yet
            execute_batch(fast, event_batch([_event(2)], mac))  # pos 2
            fast.commit()
            assert extend(engine) == 0  # the slow writer is still open: nothing past its xid is final
            slow.commit()
            assert catch_up(engine, key=key) == 2
        report = verify(engine, key=public_key(key.as_dict(private=False)), mac_key=mac)
        assert report.ok and report.checked == 2, report.problems
        with engine.connect() as conn:
            order = [r[0] for r in conn.execute(text("SELECT pos FROM audit_chain ORDER BY seq"))]
        assert sorted(order) == [1, 2]
        slow.close()
        fast.close()
        engine.dispose()


def test_chainers_take_turns(tmp_path):
    """Two chainers at once (two processes' threads): every event chained exactly once, seq gap-free."""
    import threading

    with fresh_database(tmp_path, "twochainers") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        http = authorized_client(app)
        for _ in range(30):
            http.get("/fhir/R4/Patient?_count=1")
        engine = app.extensions["fhir_db"]["engine"]
        threads = [threading.Thread(target=catch_up, args=(engine,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        catch_up(engine)
        with engine.connect() as conn:
            seqs = [r[0] for r in conn.execute(text("SELECT seq FROM audit_chain ORDER BY seq"))]
            events = conn.execute(text("SELECT count(*) FROM audit_event")).scalar()
        assert seqs == list(range(1, events + 1))
        with engine.connect() as conn:  # each link carries its event's position, time and transaction
            pairs = conn.execute(
                text(
                    "SELECT c.recorded, e.recorded, c.txid, e.txid FROM audit_chain c "
                    "JOIN audit_event e ON e.pos = c.pos"
                )
            ).all()
        assert len(pairs) == events
        assert all(cr == er and ct == et for cr, er, ct, et in pairs), pairs[:3]
        engine.dispose()


def test_background_threads_stop_when_the_app_pool_is_closed(database_url):
    """An app whose pool was closed (a finished command, a test's or a bench's app) leaves no chainer, export
    runner or subscription worker behind polling a database that may be gone."""
    from audit.chain import start_chainer
    from resources.bulk.jobs import start_runner
    from resources.subscriptions.delivery import start_worker

    application = create_app(
        {"DATABASE_URL": database_url, "AUDIT_CHAIN_INTERVAL": 0.05, "SUBSCRIPTION_WORKER": True}
    )
    threads = [start_chainer(application), start_runner(application), start_worker(application)]
    assert all(t is not None and t.thread.is_alive() for t in threads)
    application.extensions["fhir_db"]["engine"].dispose()
    for t in threads:
        t.thread.join(5)
    assert not any(t.thread.is_alive() for t in threads)


def test_background_threads_start_at_a_processs_first_request_under_any_server(database_url):
    """Served by something other than `fhir-api serve` (whose workers start them at boot), the app starts
    its chainer, export runner and subscription worker at its first request, once."""
    application = create_app(
        {"DATABASE_URL": database_url, "AUDIT_CHAIN_INTERVAL": 0.05, "SUBSCRIPTION_WORKER": True}
    )
    names = [("fhir_audit", "chainer"), ("fhir_export", "runner"), ("fhir_subscriptions", "worker")]
    assert not any(application.extensions.get(ext, {}).get(key) for ext, key in names)
    client = application.test_client()
    assert client.get("/healthz").status_code == 200
    started = [application.extensions[ext][key] for ext, key in names]
    assert all(t.thread.is_alive() for t in started)
    client.get("/healthz")
    assert [application.extensions[ext][key] for ext, key in names] == started  # the same threads
    application.extensions["fhir_db"]["engine"].dispose()
    for t in started:
        t.thread.join(5)
    assert not any(t.thread.is_alive() for t in started)


def test_no_background_threads_for_another_wsgi_app():
    """`fhir-api serve`'s worker hooks also serve other Flask apps (bench/floor_app.py): they start nothing
    for an app without this server's database, and the worker boots."""
    import threading

    from flask import Flask

    from fhir_api import background

    before = {t.ident for t in threading.enumerate()}
    background.start(Flask("floor"))
    background.stop(Flask("floor"))
    assert {t.ident for t in threading.enumerate()} <= before


def test_event_macs_are_hmac_sha256_under_each_key():
    """The per-key HMAC set up once and copied gives the RFC 2104 value (logs written before keep verifying),
    for each of several keys used in turn."""
    import hmac

    from audit.signing import event_mac

    bodies = ["", '{"resourceType":"AuditEvent"}', "ünïcödé ✓ " * 400]
    for key in (b"k" * 32, b"another key", b"x" * 100, b"k" * 32):
        for body in bodies:
            assert event_mac(key, body) == hmac.digest(key, body.encode(), "sha256").hex()
