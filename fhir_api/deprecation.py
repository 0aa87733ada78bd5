"""Deprecations: announced on every matching response, listed at /docs/deprecations, enforced after sunset.

The policy they serve is docs/versioning.md: the FHIR version is in the path (``/fhir/R4``), a breaking change
only ever gets a new path, and what an old route or parameter loses is announced first. An announcement is a
``Deprecation`` header (RFC 9745, ``@<unix seconds>``), a ``Sunset`` header (RFC 8594, an HTTP date) and a
``Link`` to its docs section (``rel="deprecation"``, and ``rel="sunset"`` when a sunset is set). After the
sunset date the route (or the requests that use the parameter) answers 410 Gone: a client that ignored the
headers fails loudly and with a link, instead of getting a silently different answer.

Entries come from the code (``BUILT_IN``, for what a release deprecates) and from operators
(``FHIR_DEPRECATIONS``, a JSON list), each an object::

    {"endpoint": "fhir.search_system",        # or "path": "/fhir/R4/Basic" (a prefix of whole segments)
     "methods": ["GET"],                       # optional: every method when absent
     "parameter": "_format",                   # optional: only requests with this query parameter
     "deprecated": "2026-01-01",               # required: date (UTC midnight) or ISO 8601 date-time
     "sunset": "2026-07-01",                   # optional: from then on, 410 Gone
     "link": "https://example.org/notice",     # optional: default /docs/deprecations#<id>
     "note": "Use GET /fhir/R4/Patient instead.",
     "id": "system-search"}                    # optional: the docs anchor

Endpoints are named as in fhir_api/openapi/operations.py (``<blueprint>.<view function>``); the OpenAPI
document marks the operations (or parameters) they name ``deprecated: true``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.http import http_date

from fhir_api.errors import Gone

DEPRECATIONS_PATH = "/docs/deprecations"
EXTENSION = "fhir_deprecations"
_SLUG = re.compile(r"[^a-z0-9]+")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")  # <rtype:res_type> -> {res_type}, as OpenAPI writes it
_OPENAPI_ARG = r"{\1}"
_FIELDS = {"id", "endpoint", "path", "methods", "parameter", "deprecated", "sunset", "link", "note"}


class Retired(Gone):
    """RFC 8594: past its announced Sunset date a deprecated route or parameter no longer answers."""

    code, slug, title = "not-supported", "retired", "Retired (past its sunset date)"
    explanation = (
        "This route, or this query parameter on it, was deprecated and announced with Deprecation and Sunset "
        "headers; its sunset date has passed, so it no longer answers. The diagnostics link to the "
        "deprecation notice, which names what replaces it (see also /docs/deprecations)."
    )


@dataclass(frozen=True)
class Deprecation:
    """One announced deprecation; ``endpoint`` or ``path`` says where, ``parameter`` narrows it."""

    id: str
    deprecated: datetime
    sunset: datetime | None = None
    endpoint: str | None = None
    path: str | None = None
    methods: frozenset[str] = frozenset()
    parameter: str | None = None
    link: str | None = None
    note: str = ""
    routes: tuple[str, ...] = ()  # an endpoint's "GET /fhir/R4/_history", filled in by init_app

    @property
    def target(self) -> str:
        """What is deprecated, in words a client developer recognises."""
        if self.routes:
            subject = ", ".join(self.routes)
        else:
            methods = f"{', '.join(sorted(self.methods))} " if self.methods else ""
            subject = f"{methods}{self.endpoint or f'{self.path} (and everything under it)'}"
        return f"Query parameter {self.parameter} on {subject}" if self.parameter else subject

    @property
    def href(self) -> str:
        """The docs link as configured: a path on this server, or another URL."""
        return self.link or f"{DEPRECATIONS_PATH}#{self.id}"

    def url(self) -> str:
        """The docs link, absolute (a Link header's target outlives the request that carried it)."""
        from fhir_api.http import base_url  # late import: http imports errors, as this module does

        return f"{base_url(root=True)}{self.href}" if self.href.startswith("/") else self.href

    def covers_path(self, path: str) -> bool:
        if self.path is None:
            return False
        prefix = self.path.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")

    def matches(self, endpoint_key: str | None, path: str, method: str, args: Mapping[str, Any]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.parameter is not None and self.parameter not in args:
            return False
        if self.endpoint is not None:
            return endpoint_key == self.endpoint
        return self.covers_path(path)


# What the code itself deprecates, kept until the release after the sunset removes the route. Empty: nothing
# in /fhir/R4 is deprecated yet.
BUILT_IN: tuple[Deprecation, ...] = ()


# -- configuration -------------------------------------------------------------------------------------------
def _when(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"FHIR_DEPRECATIONS: {name} must be a date (2026-01-31) or an ISO 8601 date-time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"FHIR_DEPRECATIONS: {name}={value!r} is not an ISO 8601 date or date-time"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _entry(raw: Any, position: int) -> Deprecation:
    where = f"FHIR_DEPRECATIONS[{position}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    endpoint, path, parameter = raw.get("endpoint"), raw.get("path"), raw.get("parameter")
    if (endpoint is None) == (path is None):
        raise ValueError(f"{where} needs exactly one of endpoint or path")
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise ValueError(f"{where}: path must start with /")
    if "deprecated" not in raw:
        raise ValueError(f"{where} needs a deprecated date")
    deprecated = _when(raw["deprecated"], f"{where}.deprecated")
    sunset = _when(raw["sunset"], f"{where}.sunset") if raw.get("sunset") is not None else None
    if sunset is not None and sunset <= deprecated:
        raise ValueError(f"{where}: sunset must come after the deprecation date")
    methods = raw.get("methods") or []
    if isinstance(methods, str):
        methods = methods.replace(",", " ").split()
    link = raw.get("link")
    if link is not None and not (
        isinstance(link, str) and (link.startswith("/") or link.startswith(("https://", "http://")))
    ):
        raise ValueError(f"{where}: link must be a path on this server or an http(s) URL")
    ident = raw.get("id") or _SLUG.sub("-", f"{endpoint or path} {parameter or ''}".lower()).strip("-")
    if not _ID.match(ident):
        raise ValueError(f"{where}: id must be a letter then letters, digits, - or _ (at most 64)")
    return Deprecation(
        id=ident,
        deprecated=deprecated,
        sunset=sunset,
        endpoint=endpoint,
        path=path,
        methods=frozenset(m.upper() for m in methods),
        parameter=parameter,
        link=link,
        note=str(raw.get("note") or ""),
    )


def parse(value: Any) -> list[Deprecation]:
    """``FHIR_DEPRECATIONS``: a JSON list (Flask's ``from_prefixed_env`` may have decoded it already)."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("FHIR_DEPRECATIONS must be a JSON list of objects") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("FHIR_DEPRECATIONS must be a JSON list of objects")
    return [item if isinstance(item, Deprecation) else _entry(item, i) for i, item in enumerate(value)]


def endpoint_keys(app: Flask) -> dict[str, str]:
    """Flask endpoint -> ``<blueprint>.<view function>`` (smorest numbers some endpoints; names do not)."""
    return {ep: f"{ep.rpartition('.')[0]}.{view.__name__}" for ep, view in app.view_functions.items()}


def _with_routes(app: Flask, entry: Deprecation, keys: Mapping[str, str]) -> Deprecation:
    """An endpoint entry with the routes it names; an error when it names none."""
    if entry.endpoint is None:
        return entry
    routes = sorted(
        f"{method} {_RULE_ARG.sub(_OPENAPI_ARG, rule.rule)}"
        for rule in app.url_map.iter_rules()
        if keys.get(rule.endpoint) == entry.endpoint
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
        if not entry.methods or method in entry.methods
    )
    if not routes:
        raise ValueError(f"FHIR_DEPRECATIONS: no route has the endpoint {entry.endpoint!r}")
    return replace(entry, routes=tuple(routes))


def _check(entries: Iterable[Deprecation]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"FHIR_DEPRECATIONS: two entries have the id {entry.id!r}")
        seen.add(entry.id)


def entries(app: Flask) -> tuple[Deprecation, ...]:
    """The app's deprecations (empty before ``init_app``)."""
    state = app.extensions.get(EXTENSION)
    return state["entries"] if state else ()


# -- requests ------------------------------------------------------------------------------------------------
def _matching() -> list[Deprecation]:
    state = current_app.extensions.get(EXTENSION)
    if not state or not state["entries"]:
        return []
    key = state["keys"].get(request.endpoint or "")
    return [e for e in state["entries"] if e.matches(key, request.path, request.method, request.args)]


def _enforce_sunset() -> None:
    if request.method == "OPTIONS":  # a CORS preflight: the request it announces gets the 410
        return
    now = datetime.now(UTC)
    for entry in _matching():
        if entry.sunset is not None and now >= entry.sunset:
            raise Retired(
                f"Retired on {entry.sunset:%Y-%m-%d} ({entry.target}, deprecated since "
                f"{entry.deprecated:%Y-%m-%d}); see {entry.url()}"
            )


def _announce(resp: Response) -> Response:
    found = _matching()
    if not found:
        return resp
    first = min(found, key=lambda e: e.deprecated)
    resp.headers["Deprecation"] = f"@{int(first.deprecated.timestamp())}"
    sunsets = [e.sunset for e in found if e.sunset is not None]
    if sunsets:
        resp.headers["Sunset"] = http_date(min(sunsets))
    for entry in found:
        resp.headers.add("Link", f'<{entry.url()}>; rel="deprecation"; type="text/html"')
        if entry.sunset is not None:
            resp.headers.add("Link", f'<{entry.url()}>; rel="sunset"; type="text/html"')
    return resp


def init_app(app: Flask) -> None:
    """Call after the last blueprint: entries naming an endpoint no route has are refused at start-up."""
    configured = parse(app.config.get("DEPRECATIONS"))
    keys = endpoint_keys(app)
    all_entries = tuple(_with_routes(app, entry, keys) for entry in (*BUILT_IN, *configured))
    _check(all_entries)
    app.extensions[EXTENSION] = {"entries": all_entries, "keys": keys}
    app.before_request(_enforce_sunset)
    app.after_request(_announce)
