"""Auditor endpoints: AuditEvent read and search, checkpoints, exports. Only the ``auditor`` role gets in.

AuditEvents cannot be created, changed or deleted through any API path (405): the server writes them.
"""

from __future__ import annotations

import json
from importlib import resources as package_files

from flask import Response, current_app, g, request, stream_with_context
from flask_smorest import Blueprint
from sqlalchemy import select

from audit import export, signing
from audit import search as audit_search
from audit.chain import GENESIS, head
from audit.models import ChainLink, Checkpoint
from audit.recorder import note_detail
from audit.verify import verify
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
    for _, event_id, body in rows:
        entries.append(
            '{"fullUrl":'
            + json.dumps(f"{base}/AuditEvent/{event_id}")
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
    counts = request.args.getlist("_count") or ["100"]
    if len(counts) > 1 or not counts[0].isdigit() or int(counts[0]) < 1:
        raise BadRequest("_count must be one positive integer (at most 1000)", expression="_count")
    limit = min(int(counts[0]), 1000)
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


@blp.route("/audit/status", methods=["GET"])
def status():
    """The chain checked from the newest signed checkpoint to the head (the full check is
    ``fhir-api audit verify``): what the auditor page shows."""
    _require_auditor("r")
    key = signing.app_key()
    latest = (
        db.session()
        .execute(
            select(Checkpoint.seq, Checkpoint.hash, Checkpoint.created, Checkpoint.jws)
            .order_by(Checkpoint.seq.desc())
            .limit(1)
        )
        .first()
    )
    public = signing.public_key(key.as_dict(private=False)) if key is not None else None
    saved = [{"seq": latest.seq, "hash": latest.hash, "jws": latest.jws}] if latest else []
    report = verify(
        _engine(),
        key=public,
        mac_key=signing.mac_key(),
        saved=saved,
        since=(latest.seq - 1, _hash_before(latest.seq)) if latest else None,
        orphans=False,
    )
    body = {
        "ok": report.ok,
        "verified_to": report.head_seq if report.ok else None,
        "head": {"seq": report.head_seq, "hash": report.head_hash},
        "checked": report.checked,
        "checkpoint": {"seq": latest.seq, "time": db.format_instant(latest.created)} if latest else None,
        "problems": report.problems,
    }
    return current_app.response_class(json.dumps(body), mimetype="application/json")


def _hash_before(seq: int) -> str:
    """The hash the link at ``seq`` must follow (its predecessor's), from the chain itself."""
    if seq <= 1:
        return GENESIS
    return db.session().execute(select(ChainLink.hash).where(ChainLink.seq == seq - 1)).scalar() or GENESIS


_UI_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
_UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@blp.route("/audit/ui", methods=["GET"])
@blp.route("/audit/ui/<name>", methods=["GET"])
def ui(name: str = "index.html"):
    """The auditor's page (static; its data calls carry the auditor's token)."""
    mimetype = "text/html" if name == "index.html" else _UI_FILES.get(name)
    if mimetype is None:
        raise NotFound(f"/audit/ui has no {name}")
    data = (package_files.files("audit") / "ui" / name).read_bytes()
    resp = current_app.response_class(data, mimetype=mimetype)
    resp.headers["Content-Security-Policy"] = _UI_CSP
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


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
