"""A loopback receiver and a registered subscriber for the subscription tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fhir_api import db
from resources.subscriptions.delivery import Settings, deliver_once
from resources.subscriptions.dispatch import dispatch_once
from tests.helpers import authorized_client


@dataclass
class Receiver:
    """An HTTP endpoint on loopback that records what it is sent and answers ``status`` (a list: one
    answer per request, the last repeated)."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=lambda: [200])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self.lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received if body]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code = box.answer()
            if 200 <= code < 300:
                with box.lock:
                    box.received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    box.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield box
    server.shutdown()
    server.server_close()


def register(app, client_id: str, role: str, scope: str, organization: str | None = None) -> None:
    """A registered client row (tokens are minted directly, so it needs no keys)."""
    from fhir_api.auth.models import AuthClient

    with app.app_context(), db.new_session() as session:
        session.add(
            AuthClient(
                client_id=client_id,
                name=client_id,
                role=role,
                scope=scope,
                organization=organization,
                created_at=db.now(),
            )
        )
        session.commit()


@pytest.fixture
def subscriber(app):
    """A registered clinical system allowed to subscribe, and a client presenting its token."""
    app.config["SUBSCRIPTION_ALLOW_PRIVATE"] = True
    scope = "system/*.cruds"
    register(app, "hospital-sub", "clinical-system", scope)
    return authorized_client(app, client_id="hospital-sub", scope=scope)


def settings(app, **over: Any) -> Settings:
    s = Settings.of({**app.config, "SUBSCRIPTION_BACKOFF_BASE": 0.01, "SUBSCRIPTION_BACKOFF_CAP": 0.02})
    return Settings(**{**s.__dict__, **over})


def pump(app, rounds: int = 20, **over: Any) -> None:
    """Run the worker's two steps until nothing is left to do (or ``rounds`` run out)."""
    import time

    from resources.subscriptions import owner

    owner.forget()  # each test's clients are new: no access remembered from an earlier test
    s = settings(app, **over)
    for _ in range(rounds):
        with app.app_context(), db.new_session() as session:
            busy = dispatch_once(session) > 0
            busy = deliver_once(session, s) > 0 or busy
        if not busy:
            time.sleep(0.05)
