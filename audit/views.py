"""Auditor endpoints: AuditEvent read and search, checkpoints, exports. Only the ``auditor`` role gets in.

AuditEvents cannot be created, changed or deleted through any API path (405): the server writes them.
"""

from __future__ import annotations

import json

from flask import Response, current_app, g, request, stream_with_context
from flask_smorest import Blueprint
from sqlalchemy import select

from audit import export, signing
from audit import search as audit_search
from audit.chain import head
from audit.models import Checkpoint
from audit.recorder import note_detail
from fhir_api import db
from fhir_api.auth.guard import access_for, authenticate
from fhir_api.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from fhir_api.http import base_url, fhir_response, negotiate_response_type
from resources.bundles import page_url
from resources.dates import parse_range

blp = Blueprint("audit", __name__, description="The audit log, for auditors")

_WRITES = ["POST", "PUT", "PATCH", "DELETE"]


def _require_auditor(action: str) -> None:
    """A valid token of role ``auditor`` whose scopes allow ``action`` on AuditEvent; 401/403 otherwise."""
    principal = authenticate()
    g.principal = principal
    if principal.role != "auditor":
        raise Forbidden("Only auditor tokens may read the audit log")
    access_for(principal).require("AuditEvent", action)


def _engine():
    return current_app.extensions["fhir_db"]["engine"]


@blp.route("/fhir/R4/AuditEvent", methods=["GET"])
def search():
    """Search the audit log (newest first): patient, agent, entity, date, action, type, subtype, outcome."""
    negotiate_response_type()
    _require_auditor("s")
    return _search_response(list(request.args.items(multi=True)))


@blp.route("/fhir/R4/AuditEvent/_search", methods=["POST"])
def search_post():
    """Search the audit log with the parameters in a form body."""
    negotiate_response_type()
    _require_auditor("s")
    return _search_response(list(request.args.items(multi=True)) + list(request.form.items(multi=True)))


def _search_response(args: list[tuple[str, str]]) -> Response:
    cfg = current_app.config
    query = audit_search.parse(args, base_url(), int(cfg["DEFAULT_PAGE_SIZE"]), int(cfg["MAX_PAGE_SIZE"]))
    rows, more = audit_search.run(db.session(), query)
    base = base_url()
    links = [{"relation": "self", "url": page_url()}]
    if more and rows:
        links.append({"relation": "next", "url": page_url(str(rows[-1][0]))})
    entries = []
    for _, body in rows:
        event_id = body.split('"id":"', 1)[1].split('"', 1)[0] if '"id":"' in body else ""
        entries.append(
            '{"fullUrl":'
            + _quote(f"{base}/AuditEvent/{event_id}")
            + ',"resource":'
            + body
            + ',"search":{"mode":"match"}}'
        )
    text = (
        '{"resourceType":"Bundle","type":"searchset","link":'
        + json.dumps(links, separators=(",", ":"))
        + ',"entry":['
        + ",".join(entries)
        + "]}"
    )
    return fhir_response(text)


def _quote(value: str) -> str:
    return json.dumps(value)


@blp.route("/fhir/R4/AuditEvent/<fid:event_id>", methods=["GET"])
def read(event_id: str):
    """One AuditEvent, exactly as recorded."""
    negotiate_response_type()
    _require_auditor("r")
    body = audit_search.read(db.session(), event_id)
    if body is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    return fhir_response(body, headers={"ETag": 'W/"1"'})


@blp.route("/fhir/R4/AuditEvent", methods=_WRITES)
@blp.route("/fhir/R4/AuditEvent/<path:rest>", methods=["GET", *_WRITES])
def refuse(rest: str | None = None):
    """The audit log is append-only, and only the server appends to it."""
    raise MethodNotAllowed(
        "AuditEvents are written by the server alone and never changed or deleted; "
        "auditors may read (GET /fhir/R4/AuditEvent/{id}) and search (GET /fhir/R4/AuditEvent)",
        headers={"Allow": "GET"},
    )


@blp.route("/audit/checkpoints", methods=["GET"])
def checkpoints():
    """Signed checkpoints of the chain (newest first) and the public key that verifies them."""
    _require_auditor("r")
    count = request.args.get("_count", "100")
    limit = min(int(count), 1000) if count.isdigit() else 100
    rows = db.session().execute(
        select(Checkpoint.seq, Checkpoint.hash, Checkpoint.created, Checkpoint.jws)
        .order_by(Checkpoint.seq.desc())
        .limit(limit)
    )
    key = signing.app_key()
    with _engine().connect() as conn:
        h = head(conn)
    body = {
        "head": {"seq": h.seq, "hash": h.hash},
        "key": key.as_dict(private=False) if key is not None else None,
        "alg": signing.ALG,
        "checkpoints": [
            {"seq": seq, "hash": digest, "time": db.format_instant(created), "jws": token}
            for seq, digest, created, token in rows
        ],
    }
    return current_app.response_class(json.dumps(body), mimetype="application/json")


@blp.route("/audit/export", methods=["GET"])
def export_log():
    """Stream the chained log as NDJSON (default), CSV or a FHIR Bundle, with a signed manifest last.

    Filters: ``start``/``end`` (FHIR dates; end exclusive), ``patient`` (Patient/id), ``client`` (client id).
    """
    _require_auditor("s")
    fmt = request.args.get("format", "ndjson").lower()
    if fmt not in export.FORMATS:
        raise BadRequest(f"format must be one of {', '.join(export.FORMATS)}", expression="format")
    flt = export.Filter(
        start=parse_range(request.args["start"], "start").low if request.args.get("start") else None,
        end=parse_range(request.args["end"], "end").low if request.args.get("end") else None,
        patient=_patient(request.args.get("patient")),
        client=request.args.get("client") or None,
    )
    key = signing.app_key()
    if key is None:
        raise Forbidden("Exports are signed, and this server has no audit signing key configured")
    engine = _engine()
    with engine.connect() as conn:
        upto = head(conn).seq
    note_detail(format=fmt, upto_seq=str(upto), **flt.describe())
    suffix = {"ndjson": "ndjson", "csv": "csv", "bundle": "json"}[fmt]
    resp = Response(
        stream_with_context(export.stream(engine, fmt, flt, key, upto)),
        mimetype=export.FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="audit-export.{suffix}"'},
    )
    return resp


def _patient(value: str | None) -> str | None:
    if not value:
        return None
    return value if "/" in value else f"Patient/{value}"
