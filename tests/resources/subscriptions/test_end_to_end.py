"""Subscriptions end to end with real processes: the server (gunicorn, its subscription worker on) and a
receiver (a small http.server script in its own process) that logs every request it gets and answers the
status code held in a file it re-reads per request.

Every wait below polls with a deadline; the server retries fast (backoff 0.2 s doubling up to 1 s) and its
worker looks for work every 0.1 s, so each scenario settles within a few seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from fhir_api import create_app
from resources.subscriptions import signing
from tests.helpers import created_id, mint_token
from tests.live import live_process
from tests.resources.subscriptions.conftest import register
from tests.resources.subscriptions.test_delivery import observation, subscription

pytestmark = pytest.mark.live

FHIR = "application/fhir+json"
PUBLIC = "http://subscriptions-e2e.test"  # the tokens' audience: the same in this process and the server's
CLIENT_ID = "e2e-subscriber"
SCOPE = "system/*.cruds"
WORKERS = 2  # two processes, two delivery workers: leases keep one sender per subscription
WAIT = 20.0  # seconds any one condition may take to come true
SERVER_ENV = {
    "FHIR_PUBLIC_URL": PUBLIC,
    "FHIR_SUBSCRIPTION_WORKER": "true",
    "FHIR_SUBSCRIPTION_ALLOW_PRIVATE": "true",  # the receiver listens on loopback, plain http
    "FHIR_SUBSCRIPTION_POLL_SECONDS": "0.1",
    "FHIR_SUBSCRIPTION_BACKOFF_BASE": "0.2",
    "FHIR_SUBSCRIPTION_BACKOFF_CAP": "1",
    "FHIR_SUBSCRIPTION_TIMEOUT": "5",
}

T = TypeVar("T")


# -- the receiver process ------------------------------------------------------------------------------------
RECEIVER_SCRIPT = r'''
"""A webhook receiver: logs each request (headers, body) as a JSON line as it comes in, then answers what
the answer file holds then: "<status code> [<seconds to wait first>]" (200 when there is none)."""
import base64, json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log_path, code_path, port_path = sys.argv[1:4]
lock = threading.Lock()


def answer():
    try:
        with open(code_path) as f:
            parts = f.read().split()
        return int(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0
    except (OSError, ValueError, IndexError):
        return 200, 0.0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code, delay = answer()
        line = json.dumps({
            "at": time.time(),
            "path": self.path,
            "code": code,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": base64.b64encode(body).decode(),
        })
        with lock, open(log_path, "a") as f:  # logged as it arrives, before the answer
            f.write(line + "\n")
        time.sleep(delay)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_path + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_path + ".tmp", port_path)
server.serve_forever()
'''


@dataclass
class Request:
    """One request the receiver got, and the code it answered."""

    code: int
    headers: dict[str, str]
    body: bytes

    @property
    def number(self) -> int:
        return int(self.headers["x-event-number"])

    @property
    def bundle(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def resource_id(self) -> str:
        return self.bundle["entry"][1]["resource"]["id"]

    def __repr__(self) -> str:  # short, for failure messages
        h = self.headers
        return f"<{self.code} event {h.get('x-event-number')} of {h.get('x-subscription-id')}>"


class Receiver:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.log = directory / "requests.jsonl"
        self.code_file = directory / "code"
        script = directory / "receiver.py"
        script.write_text(RECEIVER_SCRIPT)
        port_file = directory / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.log), str(self.code_file), str(port_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = wait_for(lambda: port_file.exists() and port_file.read_text(), "the receiver to listen", 10)
        self.url = f"http://127.0.0.1:{int(port)}/hook"

    def answer(self, code: int, delay: float = 0) -> None:
        """Answer ``code`` (after ``delay`` seconds) from the next request on (the file is replaced whole,
        never half-written)."""
        tmp = self.dir / "code.tmp"
        tmp.write_text(f"{code} {delay}")
        os.replace(tmp, self.code_file)

    def requests(self) -> list[Request]:
        """Every request so far, in arrival order."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines(keepends=True):
            if line.endswith("\n"):  # a line being written is read next time
                row = json.loads(line)
                out.append(Request(row["code"], row["headers"], base64.b64decode(row["body"])))
        return out

    def delivered(self) -> list[Request]:
        """The requests answered with success: what a receiver accepted."""
        return [r for r in self.requests() if 200 <= r.code < 300]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    box = Receiver(tmp_path)
    try:
        yield box
    finally:
        box.stop()


# -- the server process --------------------------------------------------------------------------------------
@dataclass
class Api:
    base: str
    token: str

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": FHIR, "Accept": FHIR}

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.base}/fhir/R4/{path}", data=json.dumps(body), headers=self._headers(), timeout=30
        )

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base}/fhir/R4/{path}", headers=self._headers(), timeout=30)

    def create(self, body: dict[str, Any]) -> str:
        resp = self.post(body["resourceType"], body)
        assert resp.status_code == 201, resp.text[:500]
        return created_id(resp)

    def subscribe(self, endpoint: str) -> tuple[str, str]:
        """A Subscription to matching Observations: its id and its signing secret."""
        resp = self.post("Subscription", subscription(endpoint))
        assert resp.status_code == 201, resp.text[:500]
        assert resp.json()["status"] == "active"
        return created_id(resp), resp.headers["X-Subscription-Secret"]

    def read(self, res_type: str, res_id: str) -> dict[str, Any]:
        resp = self.get(f"{res_type}/{res_id}")
        assert resp.status_code == 200, resp.text[:500]
        return resp.json()

    def log(self, sub_id: str) -> dict[str, Any]:
        """$events as {parameter name: value} (the counts, status, failures), events left out."""
        resp = self.get(f"Subscription/{sub_id}/$events?_count=1000")
        assert resp.status_code == 200, resp.text[:500]
        out: dict[str, Any] = {}
        for p in resp.json()["parameter"]:
            if p["name"] != "notification-event":
                out[p["name"]] = next(v for k, v in p.items() if k.startswith("value"))
        return out


@pytest.fixture(scope="module")
def token(database_url: str) -> str:
    """An access token of the registered clinical system below, for the server processes (same keys)."""
    app = create_app({"DATABASE_URL": database_url, "PUBLIC_URL": PUBLIC})
    try:
        return mint_token(app, client_id=CLIENT_ID, role="clinical-system", scope=SCOPE)
    finally:
        app.extensions["fhir_db"]["engine"].dispose()


@pytest.fixture
def subscriber(app) -> None:
    """The token's client, registered (a subscription's owner must be). ``app`` is requested so the shared
    test database is emptied after each test, the client with it."""
    register(app, CLIENT_ID, "clinical-system", SCOPE)


@contextmanager
def server(database_url: str, token: str, **env: str) -> Iterator[tuple[Api, subprocess.Popen]]:
    with live_process(database_url, WORKERS, {**SERVER_ENV, **env}) as (base, proc):
        yield Api(base, token), proc


@pytest.fixture(scope="class")
def shared(database_url: str, token: str) -> Iterator[Api]:
    """One server for the scenarios that do not stop it (a start and a stop take some 5 s): each test
    has its own receiver and subscription, and the tables are emptied between tests."""
    with server(database_url, token, FHIR_SUBSCRIPTION_MAX_FAILURES="3") as (api, _proc):
        yield api


# -- waiting -------------------------------------------------------------------------------------------------
def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT, describe=None) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(0.05)


def settled(api: Api, sub_id: str, receiver: Receiver, n: int) -> list[Request]:
    """Wait until all ``n`` events are delivered per the server's log (none pending) and the receiver
    accepted at least ``n``; returns what it accepted."""

    def done():
        log = api.log(sub_id)
        counts = {k: v for k, v in log.items() if k.startswith("events-")}
        return counts == {"events-since-subscription-start": str(n), "events-delivered": n} and (
            len(receiver.delivered()) >= n
        )

    wait_for(
        done,
        f"{n} events delivered",
        describe=lambda: f"log {api.log(sub_id)}, receiver got {receiver.requests()}",
    )
    return receiver.delivered()


def check_in_order_once(got: list[Request], sub_id: str, wanted: list[str]) -> None:
    """Each event accepted exactly once, numbered 1..n in order, about the resources in write order."""
    assert [r.number for r in got] == list(range(1, len(wanted) + 1)), got
    assert [r.resource_id for r in got] == wanted
    assert len({r.resource_id for r in got}) == len(got)
    assert {r.headers["x-subscription-id"] for r in got} == {sub_id}


def check_head_of_line(requests_: list[Request]) -> None:
    """A failing event holds back the later ones: numbers never go down, and no event is sent before
    every earlier one was accepted."""
    numbers = [r.number for r in requests_]
    assert numbers == sorted(numbers), requests_
    accepted: set[int] = set()
    for r in requests_:
        assert set(range(1, r.number)) <= accepted, (
            f"event {r.number} sent before an earlier one: {requests_}"
        )
        if 200 <= r.code < 300:
            accepted.add(r.number)


# -- the scenarios -------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("subscriber")
class TestOneServer:
    def test_matching_writes_arrive_signed_numbered_in_order(self, shared: Api, receiver: Receiver):
        api = shared
        sub_id, secret = api.subscribe(receiver.url)
        wanted, others = [], []
        for _ in range(3):  # the last write matches: once it is delivered, every earlier one was matched
            others.append(api.create(observation(code="1234-5")))
            wanted.append(api.create(observation()))
        got = settled(api, sub_id, receiver, 3)

        check_in_order_once(got, sub_id, wanted)
        assert len(receiver.requests()) == 3  # nothing refused, nothing retried, nothing else sent
        assert not {r.resource_id for r in got} & set(others)
        for r in got:
            assert r.headers["content-type"] == FHIR
            assert r.headers["x-event-id"] == f"{sub_id}:{r.number}"
            assert signing.verify(secret, r.headers["x-timestamp"], r.headers["x-signature"], r.body), r
            # the documented contract, independently of signing.py: HMAC-SHA256 of "<timestamp>.<body>"
            mac = hmac.new(secret.encode(), r.headers["x-timestamp"].encode() + b"." + r.body, hashlib.sha256)
            assert r.headers["x-signature"] == f"sha256={mac.hexdigest()}"
            assert abs(time.time() - int(r.headers["x-timestamp"])) < 60
            assert not signing.verify(
                "whsec_other", r.headers["x-timestamp"], r.headers["x-signature"], r.body
            )
            assert not signing.verify(
                secret, r.headers["x-timestamp"], r.headers["x-signature"], r.body + b" "
            )
            bundle = r.bundle
            assert bundle["resourceType"] == "Bundle"
            status = bundle["entry"][0]["resource"]
            assert status["resourceType"] == "Parameters"
            params = {p["name"]: p for p in status["parameter"]}
            assert params["subscription"]["valueReference"]["reference"] == (
                f"{PUBLIC}/fhir/R4/Subscription/{sub_id}"
            )
            assert params["status"]["valueCode"] == "active"
            assert params["events-since-subscription-start"]["valueString"] == str(r.number)
            resource = bundle["entry"][1]["resource"]
            assert resource["resourceType"] == "Observation"
            assert resource["code"]["coding"][0]["code"] == "8867-4"
            assert bundle["entry"][1]["request"]["method"] == "POST"

    def test_receiver_down_for_a_while_then_up_gets_every_event_once_in_order(
        self, shared: Api, receiver: Receiver
    ):
        api = shared
        receiver.answer(503)
        sub_id, _secret = api.subscribe(receiver.url)
        wanted = [api.create(observation()) for _ in range(4)]
        wait_for(lambda: len(receiver.requests()) >= 3, "three refused attempts", describe=receiver.requests)
        refused = receiver.requests()
        assert {r.number for r in refused} == {1}, refused  # the failing first event holds back the rest
        assert all(r.code == 503 for r in refused)
        receiver.answer(200)
        got = settled(api, sub_id, receiver, 4)

        check_in_order_once(got, sub_id, wanted)
        check_head_of_line(receiver.requests())
        log = api.log(sub_id)
        assert (
            log["status"] == "active"
        )  # in error after 3 failures (FHIR_SUBSCRIPTION_MAX_FAILURES), not now
        assert log["consecutive-failures"] == 0

    @pytest.mark.parametrize("gone", ["answers 503", "stopped"])
    def test_receiver_gone_for_good_puts_the_subscription_in_error(
        self, shared: Api, receiver: Receiver, gone: str
    ):
        api = shared
        if gone == "stopped":
            receiver.stop()
        else:
            receiver.answer(503)
        sub_id, _secret = api.subscribe(receiver.url)
        api.create(observation())
        sub = wait_for(
            lambda: (s := api.read("Subscription", sub_id))["status"] == "error" and s,
            "status error",
            describe=lambda: api.log(sub_id),
        )
        assert "3 consecutive deliveries failed" in sub["error"], sub
        assert ("HTTP 503" if gone == "answers 503" else "connection failed") in sub["error"], sub
        log = api.log(sub_id)
        assert log["status"] == "error"
        assert log["consecutive-failures"] >= 3
        assert log["events-pending"] == 1  # still retried, at the capped backoff
        if gone == "answers 503":
            attempts = receiver.requests()
            assert len(attempts) >= 3, attempts
            assert {r.number for r in attempts} == {1}, attempts
            assert not receiver.delivered()


@pytest.mark.usefixtures("subscriber")
def test_restart_with_deliveries_pending_loses_and_repeats_nothing(database_url, token, receiver):
    """SIGTERM while events wait (refused) and one attempt is under way: the attempt is finished and
    recorded, the lease given back; the next server process delivers the rest, each once, in order."""
    receiver.answer(503)
    with server(database_url, token) as (api, proc):
        sub_id, _secret = api.subscribe(receiver.url)
        wanted = [api.create(observation()) for _ in range(3)]
        wait_for(receiver.requests, "a first (refused) attempt", describe=receiver.requests)
        receiver.answer(200, delay=2.5)  # the next retry of event 1 is still under way at SIGTERM...
        wait_for(lambda: [r for r in receiver.requests() if r.code == 200], "a slow attempt")
        receiver.answer(503)  # ...and whatever comes after it is refused
        wanted += [api.create(observation()) for _ in range(2)]  # perhaps not yet matched at the stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    before = receiver.delivered()
    assert [r.number for r in before] == [1], receiver.requests()
    with server(database_url, token) as (api, _proc):
        receiver.answer(200)
        got = settled(api, sub_id, receiver, len(wanted))

        check_in_order_once(got, sub_id, wanted)  # event 1 (accepted during the stop) not sent again
        check_head_of_line(receiver.requests())
