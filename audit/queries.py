"""The query an AuditEvent records, with every value that could be protected data in blind-index form.

A search for ``Patient?family=Smith`` is recorded as ``family=blind:3fa9...``: an HMAC under a key derived
from the audit signing key (never in the database), so the log and every copy of it hold no name, birth date
or identifier in clear, while equal queries hash alike for an auditor correlating them. Values of
parameters that cannot hold protected data (``_count``, ``_include``, a non-protected search parameter of
the type) stay readable.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any
from urllib.parse import quote

from flask import Request

from audit import signing
from resources.protection import service as protection
from resources.search.definitions import params_for

# Result-shaping and paging parameters: their values are never patient data.
CLEAR = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_type",
        "_id",
        "_lastUpdated",
        "_since",
        "_at",
        "_cursor",
        "_profile",
        "_tag",
        "_security",
        "_source",
        "_contained",
        "_containedType",
    }
)


def _res_type(req: Request) -> str | None:
    args = req.view_args or {}
    return args.get("res_type")


def _clear(res_type: str | None, name: str) -> bool:
    base = name.split(":", 1)[0]
    if base in CLEAR:
        return True
    if res_type is None or "." in base or base.startswith("_has"):
        return False  # chains and reverse chains can reach protected parameters of other types
    if base in protection.current().protected_params(res_type):
        return False
    try:
        return base in params_for(res_type)
    except Exception:
        return False


def _blind(name: str, value: str) -> str:
    """A keyed hash of the parameter and value (the key never reaches the database); without an audit key,
    nothing of the value at all."""
    key = signing.query_key()
    if key is None:
        return "***"
    digest = hmac.new(key, f"{name.split(':', 1)[0]}={value}".encode(), hashlib.sha256).hexdigest()
    return f"blind:{digest[:24]}"


def _pairs(req: Request) -> list[tuple[str, str]]:
    pairs = list(req.args.items(multi=True))
    if req.method == "POST" and (req.endpoint or "").endswith("_post"):
        pairs += list(req.form.items(multi=True))
    header = req.headers.get("If-None-Exist")
    if header:
        from urllib.parse import parse_qsl

        pairs += parse_qsl(header.lstrip("?"), keep_blank_values=True)
    return pairs


def sensitive_values(req: Request) -> list[str]:
    """The raw values this request's query carries that are recorded blinded."""
    res_type = _res_type(req)
    return [v for k, v in _pairs(req) if v and not _clear(res_type, k)]


def recorded(req: Request) -> str:
    """``METHOD /path?query`` as the AuditEvent keeps it."""
    res_type = _res_type(req)
    enabled = protection.current().enabled
    parts = []
    for name, value in _pairs(req):
        shown = value if (not enabled or _clear(res_type, name)) else _blind(name, value)
        parts.append(f"{quote(name, safe=':._-')}={quote(shown, safe=':,|._-/')}")
    return f"{req.method} {req.path}" + ("?" + "&".join(parts) if parts else "")


def scrub_outcome(outcome: dict[str, Any], req: Request) -> dict[str, Any]:
    """The OperationOutcome as recorded: any sensitive query value it quotes is replaced."""
    values = sorted((v for v in sensitive_values(req) if len(v) >= 2), key=len, reverse=True)
    scrubbed = copy.deepcopy(outcome)
    scrubbed.pop("id", None)
    scrubbed.pop("meta", None)
    for issue in scrubbed.get("issue") or []:
        text = issue.get("diagnostics")
        if isinstance(text, str):
            for v in values:
                text = text.replace(v, "<value>")
            issue["diagnostics"] = text
    return scrubbed
