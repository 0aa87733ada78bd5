"""Prometheus metrics at ``/metrics``: requests, latency, database pool, rate limiting, audit-chain lag.

Why multiprocess mode under gunicorn: each worker counts its own requests, and a scrape reaches one worker
at random; with ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` and gunicorn.conf.py before workers fork) the
scrape sums every worker's files. Labels carry the interaction, resource type and status, never an id or
a search value. The endpoint answers a bearer ``METRICS_TOKEN`` or, without one, only ``METRICS_ALLOW``
addresses (loopback by default).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_smorest import Blueprint
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from fhir_api.errors import Forbidden, NotFound

blp = Blueprint("metrics", __name__, description="Prometheus metrics for operators")
# prometheus_client chose, when first imported, whether this process writes its values to files.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter(
    "fhir_requests_total",
    "HTTP requests by interaction (endpoint), resource type and status",
    ["interaction", "resource_type", "status"],
)
LATENCY = Histogram(
    "fhir_request_duration_seconds",
    "Time from the request reaching the app to its response, by interaction",
    ["interaction"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POOL = Gauge(
    "fhir_db_pool_connections",
    "Database connections of the pool by state, summed over live workers",
    ["state"],
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter("fhir_rate_limited_total", "Requests refused with 429, by role", ["role"])
RATE_STORE_ERRORS = Counter(
    "fhir_rate_limit_store_errors_total", "Rate-limit checks skipped because the store did not answer"
)
AUDIT_FAILURES = Counter(
    "fhir_audit_failures_total", "Requests refused with 503 because their audit record could not be written"
)


SUBSCRIPTION_DELIVERIES = Counter(
    "fhir_subscription_deliveries_total",
    "Subscription delivery attempts by outcome (delivered, retry, failed)",
    ["outcome"],
)


SUBSCRIPTION_STATUS = Counter(
    "fhir_subscription_status_changes_total",
    "Subscriptions the server moved to a status (error: the endpoint keeps failing; active: it recovered)",
    ["status"],
)


def subscription_delivery(outcome: str) -> None:
    SUBSCRIPTION_DELIVERIES.labels(outcome).inc()


def subscription_status(status: str) -> None:
    SUBSCRIPTION_STATUS.labels(status).inc()


def rate_limited(role: str) -> None:
    RATE_LIMITED.labels(role).inc()


def rate_limit_store_errors() -> None:
    RATE_STORE_ERRORS.inc()


def audit_failed() -> None:
    AUDIT_FAILURES.inc()


class _AuditChainCollector:
    """Chain lag, read from the database at scrape time (one query; it is the same for every worker)."""

    def collect(self):
        from audit.models import AuditRow, ChainLink
        from fhir_api import db

        events = GaugeMetricFamily(
            "fhir_audit_chain_lag_events", "Audit events committed but not yet hash-chained"
        )
        age = GaugeMetricFamily(
            "fhir_audit_chain_lag_seconds", "Age of the oldest audit event not yet hash-chained (0: none)"
        )
        try:
            with db.engine().connect() as conn:
                head = select(func.coalesce(func.max(ChainLink.pos), 0)).scalar_subquery()
                count, oldest = conn.execute(
                    select(func.count(), func.min(AuditRow.recorded)).where(AuditRow.pos > head)
                ).one()
        except Exception:
            return
        events.add_metric([], float(count or 0))
        if oldest is not None and oldest.tzinfo is None:
            from datetime import UTC

            oldest = oldest.replace(tzinfo=UTC)
        age.add_metric([], max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0)
        yield events
        yield age


def _interaction() -> str:
    return request.endpoint or "unmatched"


def _resource_type() -> str:
    res_type = (request.view_args or {}).get("res_type")
    return res_type if isinstance(res_type, str) else ""


def _observe(resp: Response) -> Response:
    started = g.get("started")
    interaction = _interaction()
    key = (interaction, _resource_type(), resp.status_code)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = REQUESTS.labels(interaction, key[1], str(resp.status_code))
    counter.inc()
    if started is not None:
        histogram = _histograms.get(interaction)
        if histogram is None:
            histogram = _histograms[interaction] = LATENCY.labels(interaction)
        histogram.observe(time.perf_counter() - started)
    now = time.monotonic()
    if now - _pool_sampled[0] < POOL_SAMPLE_SECONDS:
        return resp
    _pool_sampled[0] = now
    engine = current_app.extensions.get("fhir_db", {}).get("engine")
    pool = getattr(engine, "pool", None)
    if pool is not None and hasattr(pool, "checkedout"):
        POOL.labels("checked_out").set(pool.checkedout())
        POOL.labels("idle").set(pool.checkedin())
        POOL.labels("overflow").set(max(0, pool.overflow()))
    return resp


# Each series' child, found once per process (``labels`` takes a lock and builds a key on every call); the
# label values are bounded: interactions, resource types and status codes.
_counters: dict[tuple[str, str, int], Any] = {}
_histograms: dict[str, Any] = {}

# The pool gauges are sampled at most this often per process (three gauge writes on every request were a
# percent of a busy worker's CPU; a scraper reads them every 15 s or so).
POOL_SAMPLE_SECONDS = 1.0
_pool_sampled = [float("-inf")]


def _allowed() -> bool:
    cfg = current_app.config
    token = cfg.get("METRICS_TOKEN")
    if not token and cfg.get("METRICS_TOKEN_FILE"):
        token = Path(cfg["METRICS_TOKEN_FILE"]).read_text().strip()
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    networks = [n.strip() for n in str(cfg.get("METRICS_ALLOW", "")).split(",") if n.strip()]
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


@blp.route("/metrics", methods=["GET"])
@blp.doc(security=[])
def metrics():
    """Prometheus text format, for a bearer ``FHIR_METRICS_TOKEN`` or from ``FHIR_METRICS_ALLOW``."""
    if not current_app.config.get("METRICS", True):
        raise NotFound("Metrics are disabled (FHIR_METRICS=false)")
    if not _allowed():
        raise Forbidden(
            "Metrics are served to the configured scraper only (FHIR_METRICS_TOKEN / METRICS_ALLOW)"
        )
    registry = CollectorRegistry()
    if MULTIPROCESS and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry_with_chain = CollectorRegistry()
    registry_with_chain.register(_AuditChainCollector())
    body = generate_latest(registry) + generate_latest(registry_with_chain)
    resp = Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    app.after_request(_observe)
