"""Rate limits per client (by its role) and per address, shared by every worker and host through Redis.

Why the ``limits`` library directly rather than a Flask extension: the key depends on the verified token
(a forged ``client_id`` must not spend another client's budget), which only the guard knows, and requests
without a valid token must be limited by address *before* the guard refuses them.

What is limited, each with its own counter:

- a request with a valid access token: its client, at the limit of the client's role (``RATE_LIMITS``);
- a request without one (no token, a bad token, public documents): its address (``RATE_LIMIT_ANONYMOUS``);
- the token endpoint: the address, and the client it names from that address (``RATE_LIMIT_TOKEN``).

Limits are enforced in every process from one store: Redis when ``REDIS_URL`` (or ``RATE_LIMIT_STORAGE``) is
set, otherwise this process's memory, which ``serve`` refuses for more than one worker. If the store does not
answer, requests pass (logged and counted): a hospital's clinical traffic matters more than the throttle.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request
from flask.wrappers import Response
from limits import RateLimitItem, parse_many, storage, strategies

from fhir_api.errors import TooManyRequests

log = logging.getLogger("fhir_api.ratelimit")

# Endpoints that are never limited: orchestrators' probes and the metrics scrape.
EXEMPT_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "metrics.metrics", "static"})
TOKEN_ENDPOINT = "auth.token"


@dataclass(frozen=True)
class Verdict:
    """The tightest of the limits a request was counted against, for its RateLimit-* headers."""

    limit: RateLimitItem
    remaining: int
    reset_after: int
    allowed: bool


class RateLimiter:
    def __init__(self, app: Flask) -> None:
        cfg = app.config
        uri = cfg.get("RATE_LIMIT_STORAGE") or cfg.get("REDIS_URL") or "memory://"
        self.storage_uri = uri
        self.shared = not uri.startswith("memory://")
        self.store = (
            storage.storage_from_string(uri, key_prefix="fhir-rl")
            if self.shared
            else (storage.storage_from_string(uri))
        )
        strategy = strategies.STRATEGIES.get(cfg.get("RATE_LIMIT_STRATEGY", "fixed-window"))
        if strategy is None:
            raise ValueError(f"FHIR_RATE_LIMIT_STRATEGY must be one of {', '.join(strategies.STRATEGIES)}")
        self.strategy = strategy(self.store)
        self.roles = parse_role_limits(cfg.get("RATE_LIMITS") or "")
        self.anonymous = _parse(cfg.get("RATE_LIMIT_ANONYMOUS") or "", "FHIR_RATE_LIMIT_ANONYMOUS")
        self.token = _parse(cfg.get("RATE_LIMIT_TOKEN") or "", "FHIR_RATE_LIMIT_TOKEN")
        self._store_down_since = 0.0

    def check(self, limits: list[RateLimitItem], *key: str) -> Verdict | None:
        """Count one hit against each limit; the first exceeded (or the tightest) decides."""
        tightest: Verdict | None = None
        for item in limits:
            try:
                allowed = self.strategy.hit(item, *key)
                stats = self.strategy.get_window_stats(item, *key)
            except Exception as exc:
                self._store_failed(exc)
                return None
            reset_after = max(1, math.ceil(stats.reset_time - time.time()))
            verdict = Verdict(item, stats.remaining, reset_after, allowed)
            if not allowed:
                return verdict
            if tightest is None or verdict.remaining < tightest.remaining:
                tightest = verdict
        return tightest

    def _store_failed(self, exc: Exception) -> None:
        from fhir_api import metrics

        metrics.rate_limit_store_errors()
        now = time.monotonic()
        if now - self._store_down_since > 60:  # once a minute, not once per request
            self._store_down_since = now
            log.warning(
                "rate-limit store %s unavailable (%s): requests pass unthrottled",
                _safe_uri(self.storage_uri),
                type(exc).__name__,
            )


def _safe_uri(uri: str) -> str:
    """The store's URI without a password."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _parse(text: str, name: str) -> list[RateLimitItem]:
    if not text.strip() or text.strip().lower() in ("off", "none"):
        return []
    try:
        return parse_many(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a rate limit such as '100/second;5000/minute'") from None


def parse_role_limits(text: str) -> dict[str, list[RateLimitItem]]:
    """``"clinician=50/second, patient=10/second;300/minute"`` -> limits per role."""
    roles: dict[str, list[RateLimitItem]] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        role, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"FHIR_RATE_LIMITS: {part.strip()!r} should read role=limit")
        roles[role.strip()] = _parse(value, f"FHIR_RATE_LIMITS ({role.strip()})")
    return roles


def _limiter() -> RateLimiter | None:
    return current_app.extensions.get("fhir_ratelimit")


def _address() -> str:
    return request.remote_addr or "unknown"


def _token_client() -> str:
    """The client the token request names (unverified: the counter is per client *and* address)."""
    client_id = request.form.get("client_id", "")
    if not client_id and request.form.get("client_assertion"):
        import json

        from joserfc.jws import extract_compact

        try:
            claims = json.loads(extract_compact(request.form["client_assertion"].encode()).payload)
            client_id = str(claims.get("iss") or "")
        except Exception:
            client_id = ""
    return client_id[:128] or "-"


def _enforce() -> None:
    limiter = _limiter()
    if limiter is None or request.method == "OPTIONS" or request.endpoint in EXEMPT_ENDPOINTS:
        return
    from fhir_api.auth import guard
    from fhir_api.errors import Unauthorized

    principal = None
    if guard.has_bearer():
        try:
            principal = guard.authenticate()
        except Unauthorized:
            principal = None  # the guard or the view refuses it; meanwhile, it counts against its address
    verdicts: list[Verdict | None] = []
    if principal is not None:
        limits = limiter.roles.get(principal.role, limiter.roles.get("default", []))
        verdicts.append(limiter.check(limits, "client", principal.client_id))
    else:
        verdicts.append(limiter.check(limiter.anonymous, "addr", _address()))
    if request.endpoint == TOKEN_ENDPOINT and request.method == "POST":
        verdicts.append(limiter.check(limiter.token, "token", _token_client(), _address()))
    counted = [v for v in verdicts if v is not None]
    if not counted:
        return
    refused = next((v for v in counted if not v.allowed), None)
    g.rate_limit = refused or min(counted, key=lambda v: v.remaining)
    if refused is not None:
        from fhir_api import metrics

        metrics.rate_limited(principal.role if principal else "anonymous")
        who = f"client {principal.client_id}" if principal else "this address"
        raise TooManyRequests(
            f"Rate limit of {_describe(refused.limit)} exceeded for {who}; retry in {refused.reset_after} s",
            headers={"Retry-After": str(refused.reset_after), **_headers(refused)},
        )


def _describe(item: RateLimitItem) -> str:
    per = f"{item.multiples} {item.GRANULARITY.name}s" if item.multiples > 1 else item.GRANULARITY.name
    return f"{item.amount} requests per {per}"


def _headers(v: Verdict) -> dict[str, str]:
    """IETF draft RateLimit header fields (the form most gateways send)."""
    return {
        "RateLimit-Limit": str(v.limit.amount),
        "RateLimit-Remaining": str(max(0, v.remaining)),
        "RateLimit-Reset": str(v.reset_after),
        "RateLimit-Policy": f"{v.limit.amount};w={v.limit.get_expiry()}",
    }


def _add_headers(resp: Response) -> Response:
    verdict = g.get("rate_limit")
    if verdict is not None and verdict.allowed:
        resp.headers.update(_headers(verdict))
    return resp


def serving_problem(config: Mapping[str, Any], workers: int) -> str | None:
    """Why ``workers`` processes cannot serve with this configuration: per-process counters would each
    allow the whole limit again (``serve`` and gunicorn.conf.py refuse to start)."""
    if not _truthy(config.get("RATE_LIMIT_ENABLED", True)) or workers <= 1:
        return None
    uri = config.get("RATE_LIMIT_STORAGE") or config.get("REDIS_URL") or "memory://"
    if not str(uri).startswith("memory://"):
        return None
    return (
        f"{workers} workers would each keep their own rate-limit counters: set FHIR_REDIS_URL (counters "
        "shared by every worker and host), serve with one worker, or set FHIR_RATE_LIMIT_ENABLED=false"
    )


def _truthy(value: object) -> bool:
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def init_app(app: Flask) -> None:
    """Register before the guard: requests it will refuse are counted too."""
    if not _truthy(app.config.get("RATE_LIMIT_ENABLED", True)):
        return
    app.extensions["fhir_ratelimit"] = RateLimiter(app)
    app.before_request(_enforce)
    app.after_request(_add_headers)
