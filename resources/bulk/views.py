"""Bulk Data Access 2.0 endpoints: kick-off (system, Patient, Group), status, cancel, file download.

Every endpoint needs a bearer token; status, cancel and download only answer the client that asked for the
export (anyone else gets 404). Downloads open sealed elements on the way out, as reads do.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from flask import Response, current_app, g, request, stream_with_context
from flask_smorest import Blueprint

from audit import recorder as audit
from fhir_api import db
from fhir_api.auth.guard import access_for, authenticate
from fhir_api.errors import BadRequest, FhirError, Forbidden, Issue, NotFound, operation_outcome
from fhir_api.http import base_url, fhir_response
from resources.access import Access
from resources.bulk import jobs
from resources.bulk.models import ExportJob
from resources.dates import parse_range
from resources.protection import service as protection
from resources.registry import check_type
from resources.repository import ResourceRepository

blp = Blueprint("bulk", __name__, url_prefix="/fhir/R4", description="Bulk Data Access $export")
NDJSON = "application/fhir+ndjson"
_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}


def _authorize() -> Access:
    principal = authenticate()
    g.principal = principal
    g.access = access_for(principal)
    return g.access


def _kick_off(level: str, group_id: str | None = None) -> Response:
    access = _authorize()
    if not access.permits_any("s"):
        raise Forbidden("The access token's scopes allow no search, so no export")
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise BadRequest("$export runs asynchronously: send Prefer: respond-async", expression="Prefer")
    fmt = request.args.get("_outputFormat")
    if fmt and fmt not in _FORMATS:
        raise BadRequest("_outputFormat must be application/fhir+ndjson", expression="_outputFormat")
    types = [t for v in request.args.getlist("_type") for t in v.split(",") if t]
    for t in types:
        check_type(t)
        access.require(t, "s")
    since = parse_range(request.args["_since"], "_since").low if request.args.get("_since") else None
    filters: dict[str, str] = {}
    for value in (v for raw in request.args.getlist("_typeFilter") for v in raw.split(",") if v):
        res_type, _, query = value.partition("?")
        check_type(res_type)
        if res_type in filters:
            raise BadRequest(
                f"One _typeFilter per type is supported ({res_type} has two)", expression="_typeFilter"
            )
        filters[res_type] = query
    if group_id is not None:
        group = ResourceRepository(db.session()).read("Group", group_id)
        visible = access.permits("Group", "r") and (
            not access.narrowed or access.visible(db.session(), "Group", group_id)
        )
        if group is None or group.deleted or not visible:
            raise NotFound(f"Group/{group_id} is not known")
        audit.note_resource("Group", group_id, group.version)
    job = jobs.kick_off(
        db.session(),
        principal=asdict(g.principal),
        level=level,
        group_id=group_id,
        types=types,
        since=since,
        type_filters=filters,
        request_url=request.url,
    )
    audit.note_detail(export=job.id, level=level, types=",".join(types) or "all")
    note = Issue(f"Export {job.id} accepted; poll its status", code="informational", severity="information")
    return fhir_response(
        operation_outcome([note], "informational"),
        status=202,
        headers={"Content-Location": f"{base_url()}/$export-status/{job.id}"},
    )


@blp.route("/$export", methods=["GET"])
def export_system():
    """Kick off an export of every resource the token may read (``_type``, ``_since``, ``_typeFilter``)."""
    return _kick_off("system")


@blp.route("/Patient/$export", methods=["GET"])
def export_patients():
    """Kick off an export of the Patient compartment's types."""
    return _kick_off("patient")


@blp.route("/Group/<fid:group_id>/$export", methods=["GET"])
def export_group(group_id: str):
    """Kick off an export of the records of a Group's member patients."""
    return _kick_off("group", group_id)


def _own_job(job_id: str) -> ExportJob:
    _authorize()
    job = jobs.get(db.session(), job_id)
    if job is None or job.client_id != g.principal.client_id or job.status == "cancelled":
        raise NotFound(f"There is no export {job_id}")
    audit.note_detail(export=job.id)
    return job


@blp.route("/$export-status/<job_id>", methods=["GET"])
def status(job_id: str):
    """202 with X-Progress while it runs, then 200 with the manifest (or the error)."""
    job = _own_job(job_id)
    if job.status in ("queued", "running"):
        progress = "queued" if job.status == "queued" else f"running, {job.progress}%"
        return Response(status=202, headers={"X-Progress": progress, "Retry-After": "2"})
    if job.status == "failed":
        raise FhirError(f"The export failed ({job.error}); start a new one")
    base = base_url()
    manifest = {
        "transactionTime": db.format_instant(job.created),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [
            {"type": f["type"], "url": f"{base}/$export-file/{job.id}/{f['name']}", "count": f["count"]}
            for f in json.loads(job.files)
        ],
        "error": [],
    }
    return current_app.response_class(json.dumps(manifest), mimetype="application/json")


@blp.route("/$export-status/<job_id>", methods=["DELETE"])
def cancel(job_id: str):
    """Cancel the export (or delete its files once done): 202, then its status answers 404."""
    job = _own_job(job_id)
    jobs.cancel(db.session(), job, jobs.store())
    return Response(status=202)


def _opened(line: bytes) -> bytes:
    """One stored line as the FHIR resource (protected elements opened), NDJSON."""
    text = line.decode().rstrip("\n")
    cut = text.index(',"b":')
    head = json.loads(text[:cut] + "}")
    body = text[cut + 5 : -1]
    if head["k"]:
        body = protection.current().open(head["t"], head["i"], head["v"], body, head["k"])
    return body.encode() + b"\n"


@blp.route("/$export-file/<job_id>/<name>", methods=["GET"])
def download(job_id: str, name: str):
    """One output file, streamed, with protected elements opened for the client that asked."""
    job = _own_job(job_id)
    files = jobs.store()
    listed = {f["name"] for f in json.loads(job.files)}
    if job.status != "completed" or name not in listed or not files.exists(job.id, name):
        raise NotFound(f"Export {job_id} has no file {name}")
    audit.note_detail(file=name)

    def body() -> Any:
        chunk: list[bytes] = []
        for line in files.lines(job.id, name):
            chunk.append(_opened(line))
            if len(chunk) >= 500:
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)

    return Response(stream_with_context(body()), mimetype=NDJSON)
