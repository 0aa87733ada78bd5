"""HTTP conventions shared by every FHIR endpoint: media types, request ids, ETags, response building."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import simplejson
from flask import Flask, Response, current_app, g, request
from werkzeug.http import parse_date, parse_options_header

from fhir_api import logs
from fhir_api.errors import NotAcceptable, UnsupportedMediaType
from resources import jsonio

FHIR_JSON = "application/fhir+json"
JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_XML_FORMATS = {"xml", "text/xml", "application/xml", "application/fhir+xml"}
_JSON_FORMATS = {"json", FHIR_JSON, JSON, "text/json"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ETAG = re.compile(r'^(?:W/)?"?([0-9]+)"?$')


def base_url(root: bool = False) -> str:
    """The public base (``FHIR_PUBLIC_URL`` or the request's host) plus ``/fhir/R4`` unless ``root``."""
    public = current_app.config.get("PUBLIC_URL")
    origin = public.rstrip("/") if public else request.host_url.rstrip("/")
    return origin if root else origin + "/fhir/R4"


def _check_fhir_version(params: dict[str, str], exc: type[Exception]) -> None:
    version = params.get("fhirversion")
    if version and not (version == "4.0" or version.startswith("4.0.")):
        raise exc(f"Only FHIR version 4.0 is served here; fhirVersion={version} was requested")


def negotiate_response_type() -> str:
    """Pick the response media type from ``_format`` or ``Accept``; 406 for XML or other FHIR versions."""
    fmt = request.args.get("_format")
    if fmt:
        mime, params = parse_options_header(fmt)
        mime = mime.lower()
        if mime in _XML_FORMATS:
            raise NotAcceptable("XML is not supported; use _format=json")
        if mime not in _JSON_FORMATS:
            raise NotAcceptable(f"Unsupported _format '{mime}'; use json")
        _check_fhir_version({k.lower(): v for k, v in params.items()}, NotAcceptable)
        g.response_type = JSON if mime == JSON else FHIR_JSON
        return g.response_type
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        g.response_type = FHIR_JSON
        return FHIR_JSON
    chosen: str | None = None
    for part in accept.split(","):
        mime, params = parse_options_header(part.strip())
        mime = mime.lower()
        lowered = {k.lower(): v for k, v in params.items()}
        if lowered.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        if mime in (FHIR_JSON, JSON, "*/*", "application/*", "text/*", "text/json", "text/html"):
            _check_fhir_version(lowered, NotAcceptable)
            chosen = chosen or (JSON if mime == JSON else FHIR_JSON)
    if chosen is None:
        raise NotAcceptable("Only application/fhir+json and application/json responses are available")
    g.response_type = chosen
    return chosen


def require_json_body(*, allowed: tuple[str, ...] = (FHIR_JSON, JSON)) -> str:
    """Check Content-Type of a request body; returns the media type (lenient when absent)."""
    header = request.headers.get("Content-Type")
    if not header:
        return allowed[0]
    mime, params = parse_options_header(header)
    mime = mime.lower()
    if mime not in allowed:
        if mime in _XML_FORMATS:
            raise UnsupportedMediaType("XML request bodies are not supported; send application/fhir+json")
        raise UnsupportedMediaType(
            f"Content-Type {mime} is not accepted here; use one of {', '.join(allowed)}"
        )
    lowered = {k.lower(): v for k, v in params.items()}
    charset = lowered.get("charset")
    if charset and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaType("Only the UTF-8 charset is accepted")
    _check_fhir_version(lowered, UnsupportedMediaType)
    return mime


def dumps(obj: Any, pretty: bool = False) -> str:
    """Serialise with Decimal preserved as written (1.50 stays 1.50)."""
    if pretty:
        return simplejson.dumps(obj, use_decimal=True, indent=2, ensure_ascii=False)
    return jsonio.dumps(obj)  # the same compact bytes, by orjson


def wants_pretty() -> bool:
    return request.args.get("_pretty", "").lower() == "true"


def fhir_response(
    body: dict[str, Any] | str | bytes | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A FHIR JSON response; ``body`` may already be serialised text (stored resources are served as is)."""
    mimetype = g.get("response_type")
    if mimetype is None:
        try:
            mimetype = negotiate_response_type()
        except NotAcceptable:
            mimetype = FHIR_JSON  # the error about it is being rendered right now
    if body is None:
        payload: str | bytes = b""
    elif isinstance(body, (str, bytes)):
        payload = body
        if wants_pretty():
            payload = dumps(simplejson.loads(body, use_decimal=True), pretty=True)
    else:
        payload = dumps(body, pretty=wants_pretty())
    if body is None:
        resp = Response(payload, status=status, mimetype=None)
    else:
        resp = Response(payload, status=status, content_type=f"{mimetype}; charset=utf-8")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def etag(version: int | str) -> str:
    return f'W/"{version}"'


def parse_etag(value: str | None) -> int | None:
    """Read ``W/"3"`` (or the sloppier ``3`` / ``"3"`` that real clients send) as a version number."""
    if value is None:
        return None
    match = _ETAG.match(value.strip())
    if not match:
        from fhir_api.errors import BadRequest

        raise BadRequest('If-Match must be a version ETag such as W/"3"')
    return int(match.group(1))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def last_modified(when: datetime) -> str:
    """``when`` as an HTTP date (RFC 9110 IMF-fixdate), as ``werkzeug.http.http_date`` writes it: on every
    read and write, without its trip through ``email.utils`` (names fixed in English, whatever the locale)."""
    t = when.astimezone(UTC) if when.tzinfo is not None else when
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


def not_modified(version: int, when: datetime) -> bool:
    """True when If-None-Match / If-Modified-Since show the client already has this version."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or any(_ETAG.match(t) and int(_ETAG.match(t).group(1)) == version for t in tags)
    ims = request.headers.get("If-Modified-Since")
    if ims:
        since = parse_date(ims)
        if since is not None:
            return when.replace(microsecond=0) <= since
    return False


def parse_prefer() -> dict[str, str]:
    """``Prefer: return=minimal, handling=strict`` -> {"return": "minimal", "handling": "strict"}."""
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key:
                prefs[key.strip().lower()] = value.strip().strip('"').lower()
    return prefs


# Documents about the server, never about patients: they may be cached.
_PUBLIC_DOCUMENTS = ("/metadata", "/.well-known/smart-configuration", "/auth/jwks")


def init_app(app: Flask) -> None:
    """Request id in and out, and no caching of anything that may carry patient data."""

    @app.before_request
    def _request_id() -> None:
        g.started = time.perf_counter()
        g.pop("_authenticated", None)  # in-process callers may reuse an app context: never a stale principal
        pretty = request.args.getlist("_pretty")
        if len(pretty) > 1 or (pretty and pretty[0].lower() not in ("true", "false")):
            from fhir_api.errors import BadRequest

            raise BadRequest("_pretty must be true or false (once)", expression="_pretty")
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = getattr(g, "request_id", "") or str(uuid.uuid4())
        logs.log_request(resp)
        if request.path.startswith(("/fhir/", "/auth/", "/audit/")) and not request.path.endswith(
            _PUBLIC_DOCUMENTS
        ):
            resp.headers["Cache-Control"] = "no-store"
        return resp
