"""Bundle responses assembled around stored JSON text, so stored resources are never re-serialised."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlencode

from flask import request

from fhir_api import db
from fhir_api.http import base_url, dumps, etag
from resources.repository import Stored

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def link_url(base: str, path: str, args: list[tuple[str, str]], cursor: str | None) -> str:
    """A paging link: the request's parameters with ``_cursor`` replaced (or removed)."""
    kept = [(k, v) for k, v in args if k != "_cursor"]
    if cursor:
        kept.append(("_cursor", cursor))
    query = urlencode(kept)
    return f"{base}{path}" + (f"?{query}" if query else "")


def page_url(cursor: str | None = None) -> str:
    """The current GET request's URL under the public base, at another page."""
    path = request.path.removeprefix("/fhir/R4")
    return link_url(base_url(), path, list(request.args.items(multi=True)), cursor)


def _history_entry(v: Stored, base: str) -> str:
    request_part = {
        "method": v.method,
        "url": v.res_type if v.method == "POST" else f"{v.res_type}/{v.res_id}",
    }
    response_part = {
        "status": _STATUS.get(v.method, "200 OK"),
        "etag": etag(v.version),
        "lastModified": db.format_instant(v.last_updated),
    }
    head = f'{{"fullUrl":{dumps(f"{base}/{v.res_type}/{v.res_id}")}'
    resource = f',"resource":{v.body}' if v.body is not None else ""
    return f'{head}{resource},"request":{dumps(request_part)},"response":{dumps(response_part)}}}'


def history_bundle(versions: Iterable[Stored], links: dict[str, str]) -> str:
    """A ``history`` Bundle as JSON text."""
    base = base_url()
    link_json = dumps([{"relation": rel, "url": url} for rel, url in links.items()])
    entries = ",".join(_history_entry(v, base) for v in versions)
    meta = dumps({"lastUpdated": db.format_instant(db.now())})
    return (
        f'{{"resourceType":"Bundle","meta":{meta},"type":"history","link":{link_json},"entry":[{entries}]}}'
    )
