"""Transport-level protections: proxy trust, request size limits, security headers and CORS.

Why CORS is off by default: browser apps of other origins are the exception for a clinical data server,
and every allowed origin is a place a stolen token can be used from; operators name them
(``FHIR_CORS_ORIGINS``). Why headers are added only where absent: HTML pages (audit UI, docs) set their
own, stricter-for-them Content-Security-Policy, and the JSON API gets the "nothing may load" policy
the OWASP REST guidance recommends.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from fhir_api.errors import HeadersTooLarge, UriTooLong

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# What a browser app needs to talk FHIR: conditional headers in, versions and locations out.
CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "Accept",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "Prefer",
    "X-Request-Id",
]
CORS_EXPOSE_HEADERS = [
    "Location",
    "Content-Location",
    "ETag",
    "Last-Modified",
    "X-Request-Id",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Deprecation",
    "Sunset",
    "Link",
]


def cors_origins(app: Flask) -> list[str]:
    value = app.config.get("CORS_ORIGINS") or ""
    origins = value if isinstance(value, list) else value.replace(",", " ").split()
    if "*" in origins:
        raise ValueError(
            "FHIR_CORS_ORIGINS='*' would let any web page use a token it obtained; list the origins"
        )
    return origins


def _check_sizes(max_url: int, max_headers: int) -> None:
    if len(request.full_path) > max_url:
        raise UriTooLong(f"The URL is longer than {max_url} bytes; send long searches as POST [type]/_search")
    size = sum(len(k) + len(v) + 4 for k, v in request.headers.items())
    if size > max_headers:
        raise HeadersTooLarge(f"The request's headers take {size} bytes; at most {max_headers} are accepted")


_DEFAULT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", API_CSP),
    ("Cross-Origin-Resource-Policy", "same-site"),
)
_DEFAULT_NAMES = tuple((name.lower(), name, value) for name, value in _DEFAULT_HEADERS)


def _headers(resp: Response, hsts: int) -> Response:
    """The security headers a response has not set itself (one pass over its fields: werkzeug's
    ``setdefault`` raises and catches a KeyError per absent field, on every response)."""
    h = resp.headers
    present = [k.lower() for k, _ in h]
    for lower, name, value in _DEFAULT_NAMES:
        if lower not in present:
            h.add(name, value)
    if present.count("vary") > 1:  # compression and CORS each add one: one field is kinder to caches
        vary = h.getlist("Vary")
        h["Vary"] = ", ".join(dict.fromkeys(v.strip() for field in vary for v in field.split(",")))
    if hsts and request.is_secure:  # behind TLS (directly, or a trusted proxy's X-Forwarded-Proto)
        h.setdefault("Strict-Transport-Security", f"max-age={hsts}; includeSubDomains")
    return resp


def init_app(app: Flask) -> None:
    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies:  # client address and scheme from the proxies' X-Forwarded-* (only that many hops)
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    max_url = int(app.config.get("MAX_URL_BYTES") or 8000)
    max_headers = int(app.config.get("MAX_HEADER_BYTES") or 16384)
    hsts = int(app.config.get("HSTS_MAX_AGE") or 0)
    app.before_request(lambda: _check_sizes(max_url, max_headers))
    app.after_request(lambda resp: _headers(resp, hsts))
    origins = cors_origins(app)
    if origins:
        CORS(
            app,
            origins=origins,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            supports_credentials=False,  # bearer tokens, never cookies
            max_age=600,
            vary_header=True,
        )
