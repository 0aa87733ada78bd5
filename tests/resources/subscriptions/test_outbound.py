"""One delivery attempt against mocked endpoints (requests-mock), the backoff, and the SSRF check."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import requests
import requests_mock

from fhir_api import outbound
from resources.subscriptions.delivery import Settings, backoff, post

URL = "https://hooks.example.org/in"


def settings(**over) -> Settings:
    base = Settings(
        timeout=2,
        max_failures=3,
        retry_window=timedelta(hours=72),
        backoff_base=5,
        backoff_cap=3600,
        lease=timedelta(seconds=60),
        allow_private=True,
        secret_grace=timedelta(hours=24),
    )
    return Settings(**{**base.__dict__, **over})


@pytest.mark.parametrize(
    ("status", "headers", "delivered", "retryable"),
    [
        (200, {}, True, False),
        (204, {}, True, False),
        (500, {}, False, True),
        (503, {}, False, True),
        (408, {}, False, True),
        (429, {"Retry-After": "120"}, False, True),
        (400, {}, False, False),
        (404, {}, False, False),
        (410, {}, False, False),
        (301, {"Location": "https://elsewhere.example/"}, False, False),  # redirects are not followed
    ],
)
def test_what_each_answer_means(status, headers, delivered, retryable):
    with requests_mock.Mocker() as m:
        m.post(URL, status_code=status, headers=headers)
        outcome = post(URL, b"{}", {"X-Test": "1"}, settings())
        assert m.call_count == 1
        assert m.request_history[0].headers["X-Test"] == "1"
    assert outcome.code == status
    assert outcome.delivered is delivered
    assert outcome.retryable is retryable
    if "Retry-After" in headers:
        assert outcome.retry_after == 120


@pytest.mark.parametrize("exc", [requests.ConnectTimeout, requests.ReadTimeout, requests.ConnectionError])
def test_timeouts_and_connection_errors_are_retried(exc):
    with requests_mock.Mocker() as m:
        m.post(URL, exc=exc)
        outcome = post(URL, b"{}", {}, settings())
    assert outcome.code is None and outcome.retryable and not outcome.delivered
    assert outcome.error


def test_backoff_grows_with_jitter_up_to_the_cap_and_honours_retry_after():
    s = settings(backoff_base=5, backoff_cap=60)
    for attempt, ceiling in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)):
        delays = [backoff(attempt, s) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert backoff(1, s, retry_after=30) >= 30
    assert backoff(1, s, retry_after=10_000) <= 60


def _resolving_to(monkeypatch, address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(family, socket.SOCK_STREAM, 6, "", (address, 443))]
    )


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.1", "192.168.1.5", "169.254.169.254", "::1", "fd00::1"]
)
def test_private_targets_are_refused(monkeypatch, address):
    _resolving_to(monkeypatch, address)
    with pytest.raises(outbound.UnsafeTarget):
        outbound.check(URL, allow_private=False)


def test_a_public_target_is_pinned_to_the_address_checked(monkeypatch):
    _resolving_to(monkeypatch, "93.184.216.34")
    target = outbound.check(URL, allow_private=False)
    assert target.address == "93.184.216.34" and target.host == "hooks.example.org"
    assert outbound._pinned_url(target) == "https://93.184.216.34/in"


def test_plain_http_and_credentials_are_refused():
    with pytest.raises(outbound.UnsafeTarget):
        outbound.check("http://hooks.example.org/in", allow_private=False)
    with pytest.raises(outbound.UnsafeTarget):
        outbound.check("https://user:pw@hooks.example.org/in", allow_private=True)


def test_the_server_certificate_is_presented_for_mutual_tls():
    with requests_mock.Mocker() as m:
        m.post(URL, status_code=200)
        post(URL, b"{}", {}, settings(client_cert=("/etc/fhir/client.pem", "/etc/fhir/client.key")))
        assert m.last_request.cert == ("/etc/fhir/client.pem", "/etc/fhir/client.key")
        post(URL, b"{}", {}, settings())
        assert m.last_request.cert is None
