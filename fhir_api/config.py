"""Configuration defaults; every value can be overridden by a ``FHIR_``-prefixed environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``./var/`` of the working directory."""
    return f"sqlite:///{Path(os.getcwd(), 'var', 'fhir.sqlite3')}"


DEFAULTS: dict[str, Any] = {
    # Storage
    "DATABASE_URL": None,  # resolved to default_database_url() at app creation
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 10,
    "DB_POOL_RECYCLE": 1800,
    "DB_ECHO": False,
    # HTTP
    "PUBLIC_URL": None,  # e.g. https://fhir.example.org ; None = derived from the request
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
    "UPDATE_CREATE": True,  # PUT to an unknown id creates it with the client's id (as HAPI does)
    "CONDITIONAL_DELETE_MULTIPLE": False,  # DELETE Type?criteria may delete several matches
    "CONDITIONAL_DELETE_LIMIT": 100,
    "BUNDLE_MAX_ENTRIES": 10000,  # entries per batch or transaction (more: 413)
    "MAX_URL_BYTES": 8000,  # longer URLs get 414 (long searches belong in POST _search)
    "MAX_HEADER_BYTES": 16384,  # all header fields together; more gets 431
    "TRUSTED_PROXIES": 0,  # proxies in front whose X-Forwarded-For/-Proto/-Host are believed
    "HSTS_MAX_AGE": 63072000,  # Strict-Transport-Security on requests that came over TLS (0: none)
    "CORS_ORIGINS": "",  # browser origins allowed to call the API, space- or comma-separated; none: off
    # Rate limits (429 with Retry-After). Per client by its role; per address without a valid token; the
    # token endpoint per client and address. Counters live in Redis when REDIS_URL is set (required for more
    # than one worker), else in the process. Values: "N/second", "N/minute", several joined by ";".
    "REDIS_URL": None,
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_STORAGE": None,  # a limits storage URI; default: REDIS_URL, else memory://
    "RATE_LIMIT_STRATEGY": "fixed-window",  # or sliding-window-counter, moving-window
    "RATE_LIMITS": (
        "clinical-system=200/second;6000/minute, clinician=50/second;1500/minute, "
        "insurer=50/second;1500/minute, patient=10/second;300/minute, "
        "auditor=10/second;300/minute, admin=5/second;120/minute"
    ),
    "RATE_LIMIT_ANONYMOUS": "20/second;300/minute",
    "RATE_LIMIT_TOKEN": "5/second;60/minute",
    # Logs: one JSON object per line (request id, client, interaction, status, duration; never a query
    # value or a body) or "text" for a terminal.
    "LOG_FORMAT": "json",
    # Prometheus /metrics: for a bearer METRICS_TOKEN (or METRICS_TOKEN_FILE), else only from METRICS_ALLOW.
    "METRICS": True,
    "METRICS_TOKEN": None,
    "METRICS_TOKEN_FILE": None,
    "METRICS_ALLOW": "127.0.0.0/8, ::1/128",
    # Bulk $export: where files go (default ./var/exports), how often each process looks for jobs
    "EXPORT_DIR": None,
    "EXPORT_POLL_INTERVAL": 5.0,  # seconds between a runner's polls (a kick-off wakes its own process's)
    # Subscriptions (rest-hook webhooks): each app process runs a worker thread that matches and delivers.
    "SUBSCRIPTION_WORKER": True,
    "SUBSCRIPTION_POLL_SECONDS": 0.25,  # how often each process looks for events due
    "SUBSCRIPTION_MATCH_SECONDS": 0.5,  # at least this long between matching batches (one process matches)
    "SUBSCRIPTION_ALLOW_PRIVATE": False,  # private/loopback or plain-http endpoints (tests, demo)
    "SUBSCRIPTION_TIMEOUT": 10,  # seconds an endpoint has to answer
    "SUBSCRIPTION_MAX_FAILURES": 10,  # consecutive failures before the subscription shows status error
    "SUBSCRIPTION_RETRY_HOURS": 72,  # an event is retried this long, then given up
    "SUBSCRIPTION_BACKOFF_BASE": 5,  # seconds before the first retry; doubles, with jitter...
    "SUBSCRIPTION_BACKOFF_CAP": 3600,  # ...up to this
    "SUBSCRIPTION_SECRET_GRACE_HOURS": 24,  # after $rotate-secret, the old secret signs too this long
    "SUBSCRIPTION_MAX_PER_CLIENT": 1000,  # live (not off) subscriptions one client may have
    "SUBSCRIPTION_CLIENT_CERT": None,  # PEM files: the server's certificate for receivers that ask for
    "SUBSCRIPTION_CLIENT_KEY": None,  # mutual TLS (presented on every https delivery)
    # Authorization (SMART). The signing key has no default: `make demo` creates one under var/keys/.
    "AUTH_SIGNING_KEY_FILE": None,
    "AUTH_TOKEN_LIFETIME": 300,  # seconds, at most 300
    "AUTH_JWKS_ALLOW_PRIVATE": False,  # let client JWKS URLs point at private addresses (tests, demo)
    # Resource-server mode (AUTH_MODE=external): tokens come from the hospital's OpenID Connect provider.
    "AUTH_MODE": "builtin",  # builtin | external
    "AUTH_EXTERNAL_ISSUER": None,  # the provider's iss, e.g. https://sso.example.org/realms/hospital
    "AUTH_EXTERNAL_AUDIENCE": None,  # the aud the provider puts in tokens for this server
    "AUTH_EXTERNAL_JWKS_URL": None,  # the provider's signing keys (fetched, cached, SSRF-checked)
    "AUTH_EXTERNAL_ALGORITHMS": None,  # default RS256..ES512, PS256/384; never none or HS*
    "AUTH_EXTERNAL_ROLE_CLAIM": "fhir_role",  # claim naming the role; else derived from the scopes
    "AUTH_EXTERNAL_TOKEN_ENDPOINT": None,  # announced in SMART discovery
    "AUTH_EXTERNAL_AUTHORIZATION_ENDPOINT": None,
    "AUTH_ENFORCE": True,  # false: every FHIR request gets system/*.* without a token (bench/auth.py only)
    # Field-level encryption. Keys have no default: `make demo` creates var/keys/keyring.json; production
    # sets CRYPTO_KEY_FILE (or CRYPTO_KEYRING, the same JSON inline) or KMS_PROVIDER=vault with VAULT_*.
    "PROTECTION": True,  # false: store and index everything in clear (benchmarks and comparisons only)
    "PROTECTED_ELEMENTS": "",  # more element paths to protect, comma-separated: "Observation.valueString"
    "KMS_PROVIDER": "local",  # local | vault
    "CRYPTO_KEY_FILE": None,
    "CRYPTO_KEYRING": None,
    "VAULT_ADDR": None,
    "VAULT_TOKEN": None,
    "VAULT_TOKEN_FILE": None,
    "VAULT_TRANSIT_KEY": None,
    "VAULT_TRANSIT_MOUNT": "transit",
    "VAULT_NAMESPACE": None,
    # Audit log. The Ed25519 key that signs checkpoints and exports has no default: `make demo` creates
    # var/keys/audit-signing.jwk; `serve` refuses to start without one.
    "AUDIT": True,  # false: record nothing (benchmarks pricing the audit log only)
    "AUDIT_SIGNING_KEY_FILE": None,
    # true: a read's record waits for PostgreSQL's WAL flush before the data leaves (synchronous commit);
    # false: it is committed and visible at once and flushed within ~0.6 s (README: audit log).
    "AUDIT_FLUSH_READS": False,
    "AUDIT_CHAIN_INTERVAL": 1.0,  # seconds between chainer runs in each process
    "AUDIT_CHECKPOINT_INTERVAL": 60.0,  # seconds between signed checkpoints (when the log grew)
    "AUDIT_RETENTION_DAYS": 6 * 366,  # six years (HIPAA 164.316(b)(2)); see README on partitioning
    # Benchmarks only: false writes resources without search-index rows (searches then miss them).
    "SEARCH_INDEXING": True,
    "DEFAULT_PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 1000,
    # gzip (Flask-Compress)
    "COMPRESS_ALGORITHM": ["gzip"],
    "COMPRESS_MIMETYPES": ["application/fhir+json", "application/json", "text/html", "text/csv"],
    "COMPRESS_MIN_SIZE": 1024,
    "COMPRESS_REGISTER": True,
    # flask-smorest / OpenAPI
    "API_TITLE": "FHIR R4 API",
    "API_VERSION": "0.1.0",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "JSON_SORT_KEYS": False,
}


def normalise_database_url(url: str) -> str:
    """Let operators write ``postgresql://`` and still get the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def flag(value: object) -> bool:
    """A boolean setting as an operator may write it: ``FHIR_X=False``, ``no`` or ``off`` are false (the
    environment's values arrive as strings unless they are JSON, and ``bool("False")`` is true)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
