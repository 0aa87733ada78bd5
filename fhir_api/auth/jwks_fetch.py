"""Fetching a client's registered JWKS URL safely: size and time limited, cached per Cache-Control, and
never from private, loopback or link-local addresses (no SSRF into the hospital network) unless
``FHIR_AUTH_JWKS_ALLOW_PRIVATE`` is set (tests and the demo)."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import requests
from flask import current_app

from fhir_api import outbound
from fhir_api.config import flag

MAX_BYTES = 64 * 1024
TIMEOUT = 5.0
DEFAULT_TTL = 300
MAX_TTL = 3600

_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}
_LOCK = threading.Lock()
_MAX_AGE = re.compile(r"max-age=(\d+)")


class JwksFetchError(Exception):
    """The JWKS could not be fetched or is not acceptable; the message says why."""


def _check_address(url: str) -> None:
    try:
        outbound.check(
            url, allow_private=flag(current_app.config.get("AUTH_JWKS_ALLOW_PRIVATE")), what="the JWKS URL"
        )
    except outbound.UnsafeTarget as exc:
        raise JwksFetchError(str(exc)) from None


def _ttl(headers: Any) -> float:
    control = headers.get("Cache-Control", "")
    if "no-store" in control or "no-cache" in control:
        return 0.0
    found = _MAX_AGE.search(control)
    return float(min(int(found.group(1)), MAX_TTL)) if found else float(DEFAULT_TTL)


def fetch_jwks(url: str, *, refresh: bool = False) -> dict[str, Any]:
    """The JWK Set at ``url``, from the cache while fresh."""
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(url)
    if hit and hit[0] > now and not refresh:
        return hit[1]
    _check_address(url)
    try:
        with requests.get(url, timeout=TIMEOUT, stream=True, allow_redirects=False) as resp:
            if resp.status_code != 200:
                raise JwksFetchError(f"the JWKS URL answered HTTP {resp.status_code}")
            body = b""
            for chunk in resp.iter_content(8192):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise JwksFetchError(f"the JWKS is larger than {MAX_BYTES // 1024} kB")
            ttl = _ttl(resp.headers)
    except requests.RequestException as exc:
        raise JwksFetchError(f"the JWKS URL could not be fetched ({type(exc).__name__})") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise JwksFetchError("the JWKS URL did not return JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksFetchError("the JWKS URL did not return a JWK Set")
    if ttl > 0:
        with _LOCK:
            _CACHE[url] = (now + ttl, data)
    return data


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
