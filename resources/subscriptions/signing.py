"""Signing notifications: HMAC-SHA256 over the timestamp and the body, with a per-subscription secret.

Headers on every delivery::

    X-Timestamp: 1732456789                      (Unix seconds when it was sent)
    X-Signature: sha256=<hex>[, sha256=<hex>]    (one per valid secret: two while a rotation settles)

The signed message is ``<timestamp>.<body bytes>``. A receiver recomputes it with its secret, compares in
constant time, and refuses timestamps outside its replay window (five minutes is usual). ``verify`` below
is the reference implementation (docs/subscriptions.md has it in Python and JavaScript).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

PREFIX = "sha256="


def new_secret() -> str:
    """32 random bytes, URL-safe text: what the owner is shown once."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def headers(secrets_: list[str], body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "X-Timestamp": str(timestamp),
        "X-Signature": ", ".join(signature(s, timestamp, body) for s in secrets_),
    }


def verify(
    secret: str,
    timestamp: str,
    signature_header: str,
    body: bytes,
    *,
    window: int = 300,
    now: float | None = None,
) -> bool:
    """Whether a delivery is authentic and fresh (receivers: copy this function)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - sent) > window:
        return False
    expected = signature(secret, sent, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature_header.split(","))
