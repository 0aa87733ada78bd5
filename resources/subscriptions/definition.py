"""What a Subscription resource asks for, checked: criteria, channel, payload and headers.

R4 Subscriptions (``criteria`` is a search such as ``Observation?patient=123``) on a ``rest-hook`` channel.
The payload follows the R5 backport: ``channel.payload`` is the MIME type, and the backport's
``backport-payload-content`` extension on it chooses ``empty``, ``id-only`` or ``full-resource``; without
that extension a payload means the full resource, and no payload means an empty notification.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_api import outbound
from fhir_api.errors import Unprocessable
from resources.registry import check_type

PAYLOAD_CONTENT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content"
CONTENTS = ("empty", "id-only", "full-resource")
MIME_TYPES = ("application/fhir+json", "application/json")
REDACTED = "[redacted]"
_FORBIDDEN_HEADERS = {
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-signature",
    "x-timestamp",
}
_MAX_HEADERS = 10


@dataclass(frozen=True)
class Definition:
    criteria_type: str
    criteria: tuple[tuple[str, str], ...]
    endpoint: str
    content: str
    mime: str | None
    headers: tuple[tuple[str, str], ...]  # (name, value); value REDACTED: keep the one stored
    wanted: str  # the status the client asked for


def _fail(message: str, expression: str) -> Unprocessable:
    return Unprocessable(message, expression=expression)


MAX_TEXT = 2048  # criteria and endpoint


def parse_criteria(text: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    if isinstance(text, str) and len(text) > MAX_TEXT:
        raise _fail(f"Subscription.criteria is longer than {MAX_TEXT} characters", "Subscription.criteria")
    if not isinstance(text, str) or not text.strip():
        raise _fail(
            "A Subscription needs criteria: a search such as Observation?code=...", "Subscription.criteria"
        )
    res_type, _, query = text.strip().partition("?")
    if "/" in res_type or not res_type:
        raise _fail(
            "Subscription.criteria must be a search relative to the FHIR base, such as "
            "Observation?patient=Patient/123 (topic-based subscriptions are not supported)",
            "Subscription.criteria",
        )
    check_type(res_type)
    try:
        pairs = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise _fail("Subscription.criteria has a malformed query", "Subscription.criteria") from None
    for name, _ in pairs:
        base = name.split(":")[0]
        if base in ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total"):
            raise _fail(
                f"{name} does not choose resources, so it has no place in criteria", "Subscription.criteria"
            )
    return res_type, pairs


def check_endpoint(url: Any, *, allow_private: bool) -> str:
    """Syntax and literal addresses now; the host's addresses again at every delivery (fhir_api.outbound)."""
    where = "Subscription.channel.endpoint"
    if not isinstance(url, str) or not url:
        raise _fail("A rest-hook Subscription needs channel.endpoint", where)
    if len(url) > MAX_TEXT:
        raise _fail(f"channel.endpoint is longer than {MAX_TEXT} characters", where)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise _fail("channel.endpoint is not a valid URL", where) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _fail("channel.endpoint must be an absolute http(s) URL", where)
    if parts.username or parts.password:
        raise _fail("channel.endpoint must not carry credentials (use channel.header)", where)
    if parts.fragment:
        raise _fail("channel.endpoint must not have a fragment", where)
    if allow_private:
        return url
    if parts.scheme != "https":
        raise _fail("channel.endpoint must use https", where)
    host = parts.hostname
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise _fail("channel.endpoint may not point at this server's own network", where) from None
        return url
    if not outbound.public(address):
        raise _fail("channel.endpoint points at a private, loopback or link-local address", where)
    return url


def _content(channel: dict[str, Any], mime: str | None) -> str:
    extensions = (channel.get("_payload") or {}).get("extension") or []
    chosen = [
        e.get("valueCode") for e in extensions if isinstance(e, dict) and e.get("url") == PAYLOAD_CONTENT
    ]
    if chosen:
        if chosen[0] not in CONTENTS:
            raise _fail(
                f"payload content must be one of {', '.join(CONTENTS)}", "Subscription.channel.payload"
            )
        if mime is None and chosen[0] != "empty":
            raise _fail(
                "id-only and full-resource notifications need channel.payload (a MIME type)",
                "Subscription.channel.payload",
            )
        return chosen[0]
    return "full-resource" if mime else "empty"


def _headers(values: Any) -> tuple[tuple[str, str], ...]:
    where = "Subscription.channel.header"
    if values is None:
        return ()
    if not isinstance(values, list) or len(values) > _MAX_HEADERS:
        raise _fail(f"channel.header is a list of at most {_MAX_HEADERS} 'Name: value' strings", where)
    out = []
    for value in values:
        name, colon, rest = str(value).partition(":")
        name, rest = name.strip(), rest.strip()
        if not colon or not name or not all(c.isalnum() or c in "-_" for c in name) or not rest:
            raise _fail("each channel.header must be 'Name: value'", where)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest) or len(rest) > 4096:
            raise _fail("a channel.header value may not hold control characters or exceed 4096", where)
        if name.lower() in _FORBIDDEN_HEADERS:
            raise _fail(f"channel.header may not set {name}: the server sets it", where)
        out.append((name, rest))
    return tuple(out)


def parse(resource: dict[str, Any], *, allow_private: bool) -> Definition:
    channel = resource.get("channel") or {}
    kind = channel.get("type")
    if kind != "rest-hook":
        raise _fail(
            f"channel.type {kind!r} is not supported here: only rest-hook", "Subscription.channel.type"
        )
    res_type, criteria = parse_criteria(resource.get("criteria"))
    endpoint = check_endpoint(channel.get("endpoint"), allow_private=allow_private)
    mime = channel.get("payload")
    if mime is not None:
        mime = str(mime).split(";")[0].strip()
        if mime not in MIME_TYPES:
            raise _fail(
                f"channel.payload must be one of {', '.join(MIME_TYPES)}", "Subscription.channel.payload"
            )
    if "end" in resource and not isinstance(resource["end"], str):
        raise _fail("Subscription.end must be an instant", "Subscription.end")
    return Definition(
        criteria_type=res_type,
        criteria=criteria,
        endpoint=endpoint,
        content=_content(channel, mime),
        mime=mime,
        headers=_headers(channel.get("header")),
        wanted=str(resource.get("status") or "requested"),
    )


def redacted(resource: dict[str, Any], status: str, error: str | None) -> dict[str, Any]:
    """The resource as stored: the status the server set, its error, header values never kept in clear."""
    out = dict(resource)
    out["status"] = status
    if error:
        out["error"] = error
    else:
        out.pop("error", None)
    channel = dict(out.get("channel") or {})
    if channel.get("header"):
        channel["header"] = [f"{str(h).partition(':')[0].strip()}: {REDACTED}" for h in channel["header"]]
        out["channel"] = channel
    return out
