"""Structured logs: one JSON object per line, with what operators need and nothing a patient would mind.

Why the route and not the URL: a URL carries resource ids (client-chosen ids can be record numbers) and
search values (names, birth dates); the access line names the route with its resource type, the parameter
names, and the request id that leads to the audit log, where the details are kept under access control.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import g, request
from flask.wrappers import Response

access_log = logging.getLogger("fhir_api.access")

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_RULE_ARG = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
_SHOWN_ARGS = ("res_type", "comp_type")  # resource types are not identifying; ids and names may be
_ACCESS_LINE = "%s %s%s %s %sms request=%s client=%s"
_FIELDS = "_fhir_fields"  # a record's own fields, when its maker names them (the access line)
_RECORD_ATTRIBUTES = len(vars(logging.makeLogRecord({})))  # what every record has before any extra field


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}``; exceptions as a ``trace`` string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = record.__dict__
        fields = attributes.get(_FIELDS)
        if fields is not None and len(attributes) == _RECORD_ATTRIBUTES + len(fields) + 1:
            out.update(fields)  # an access line nothing else added to (a filter): its own fields are all
        else:
            for key, value in vars(record).items():
                if key not in _STANDARD and not key.startswith("_"):
                    out[key] = value
        if record.exc_info:
            out["trace"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()  # a line per request: several times json's speed
        except TypeError:  # an integer beyond 64 bits, a non-string key in an extra field
            return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """The ``fhir_api`` loggers write to stderr, once per process whoever serves the app."""
    logger = logging.getLogger("fhir_api")
    logger.setLevel(level)
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)


def route() -> str:
    """``/fhir/R4/Patient/{res_id}``: the matched route with resource types filled in, ids left out."""
    rule = request.url_rule
    if rule is None:
        return "(no route)"
    args = request.view_args or {}
    shown = tuple(args.get(name) for name in _SHOWN_ARGS)
    key = (rule.rule, shown)
    found = _ROUTES.get(key)
    if found is None:

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            return str(args[name]) if name in _SHOWN_ARGS and name in args else "{" + name + "}"

        found = _RULE_ARG.sub(fill, rule.rule)
        if len(_ROUTES) < _ROUTES_KEPT:  # routes x resource types: a few thousand at most
            _ROUTES[key] = found
    return found


_ROUTES: dict[tuple[str, tuple[Any, ...]], str] = {}
_ROUTES_KEPT = 10_000


def parameter_names() -> list[str]:
    """The query's parameter names (their values could be protected data, so none is logged)."""
    if not request.query_string:
        return []
    return list(dict.fromkeys(name for name, _ in request.args.items(multi=True)))


def log_request(resp: Response) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    started = g.get("started")
    principal = g.get("principal") or _authenticated()
    names = parameter_names()
    fields: dict[str, Any] = {
        "request_id": g.get("request_id"),
        "method": request.method,
        "route": route(),
        "interaction": request.endpoint or "unmatched",
        "resource_type": (request.view_args or {}).get("res_type"),
        "params": names,
        "status": resp.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1) if started else None,
        "client_id": getattr(principal, "client_id", None),
        "role": getattr(principal, "role", None),
        "remote": request.remote_addr,
        "bytes": resp.content_length,
    }
    query = ("?" + "&".join(f"{n}=***" for n in names)) if names else ""
    args = (
        request.method,
        fields["route"],
        query,
        resp.status_code,
        fields["duration_ms"],
        fields["request_id"],
        fields["client_id"] or "-",
    )
    # The record made here and handed to the logger's handlers, as ``info`` would, without its search of the
    # call stack for a file and line that no access line shows (a few microseconds of every request).
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, _ACCESS_LINE, args, None, extra=fields
    )
    record.__dict__[_FIELDS] = fields
    access_log.handle(record)


def _authenticated() -> Any:
    known = g.get("_authenticated")
    return None if isinstance(known, Exception) else known
