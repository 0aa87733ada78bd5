"""HTTP views for the FHIR REST API: parse the request, call one interaction, shape the response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from flask import current_app, g, jsonify, request
from flask_smorest import Blueprint
from sqlalchemy.exc import IntegrityError
from werkzeug.routing import BaseConverter

from audit import recorder as audit
from fhir_api import db
from fhir_api.auth.discovery import smart_configuration as smart_configuration_document
from fhir_api.errors import (
    BadRequest,
    Conflict,
    FhirError,
    InvalidResource,
    Issue,
    MethodNotAllowed,
    NotFound,
    operation_outcome,
)
from fhir_api.http import (
    JSON,
    JSON_PATCH,
    MERGE_PATCH,
    base_url,
    etag,
    fhir_response,
    last_modified,
    negotiate_response_type,
    not_modified,
    parse_etag,
    parse_prefer,
    require_json_body,
)
from resources import everything, interactions, jsonio, transactions
from resources.access import Access
from resources.bundles import history_bundle, page_url
from resources.capability import capability_statement
from resources.dates import parse_range
from resources.registry import check_type
from resources.repository import HistoryQuery, ResourceRepository, Stored
from resources.search.compartments import member_params
from resources.search.query import SearchContext
from resources.search.results import SearchPage, parse_request, searchset_bundle
from resources.summary import parse_elements, parse_summary, select_elements, summarize
from resources.validation import validate

blp = Blueprint("fhir", __name__, url_prefix="/fhir/R4", description="FHIR R4 RESTful interactions")

F = TypeVar("F", bound=Callable[..., Any])


class ResourceTypeConverter(BaseConverter):
    """A capitalised name; unknown names reach the view, which answers 404 with an OperationOutcome."""

    regex = r"[A-Z][A-Za-z]{0,63}"


class FhirIdConverter(BaseConverter):
    """FHIR id: 1-64 of [A-Za-z0-9-.]."""

    regex = r"[A-Za-z0-9\-\.]{1,64}"


def interaction(code: str, level: str) -> Callable[[F], F]:
    """Mark a view with a FHIR interaction it implements; the CapabilityStatement reads these marks."""

    def mark(view: F) -> F:
        marks = getattr(view, "fhir_interactions", ())
        view.fhir_interactions = (*marks, (code, level))  # type: ignore[attr-defined]
        return view

    return mark


@blp.before_request
def _negotiate() -> None:
    if request.endpoint == "fhir.smart_configuration":
        return  # SMART: JSON whatever the Accept header says
    negotiate_response_type()  # 406 before any work
    args = request.view_args or {}
    if "AuditEvent" in (args.get("res_type"), args.get("comp_type")):
        raise MethodNotAllowed(
            "AuditEvents live in the audit log: auditors read and search them at /fhir/R4/AuditEvent"
        )


def _access() -> Access:
    """The request's access, set by fhir_api.auth's guard; none (nothing visible) if it did not run."""
    return getattr(g, "access", None) or Access()


def _repo() -> ResourceRepository:
    return ResourceRepository(
        db.session(), index=bool(current_app.config["SEARCH_INDEXING"]), local_base=base_url()
    )


def _version_headers(s: Stored) -> dict[str, str]:
    return {"ETag": etag(s.version), "Last-Modified": last_modified(s.last_updated)}


def _location(s: Stored) -> str:
    return f"{base_url()}/{s.res_type}/{s.res_id}/_history/{s.version}"


def _write_response(s: Stored, status: int, message: str):
    """Honour ``Prefer: return=minimal | representation | OperationOutcome``."""
    headers = {**_version_headers(s), "Location": _location(s)}
    preference = parse_prefer().get("return", "representation")
    if preference == "minimal":
        return fhir_response(None, status=status, headers=headers)
    if preference == "operationoutcome":
        body = operation_outcome(
            [Issue(message, code="informational", severity="information")], "informational"
        )
        return fhir_response(body, status=status, headers=headers)
    return fhir_response(s.body, status=status, headers=headers)


def _update_response(stored: Stored, created: bool):
    """201 when the update created the resource, else 200 with the new version."""
    name = f"{stored.res_type}/{stored.res_id}"
    if created:
        return _write_response(stored, 201, f"Created {name}")
    return _write_response(stored, 200, f"Updated {name} to version {stored.version}")


def _resource_body() -> dict[str, Any]:
    require_json_body()
    return jsonio.load_resource(request.get_data(cache=False))


@blp.route("/metadata", methods=["GET"])
@interaction("capabilities", "system")
def capabilities():
    """CapabilityStatement generated from the routes registered here."""
    return fhir_response(capability_statement(), headers={"Cache-Control": "public, max-age=300"})


@blp.route("/.well-known/smart-configuration", methods=["GET"])
def smart_configuration():
    """SMART on FHIR discovery: where to get tokens and what this server supports."""
    resp = jsonify(smart_configuration_document())
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


def _criteria() -> list[tuple[str, str]]:
    """Conditional-interaction criteria: the URL's query (as fhirpy sends) or ``If-None-Exist``."""
    criteria = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_format", "_pretty")]
    header = request.headers.get("If-None-Exist")
    if header:
        criteria += parse_qsl(header.lstrip("?"), keep_blank_values=True)
    return criteria


@blp.route("/<rtype:res_type>", methods=["POST"])
@interaction("create", "type")
@interaction("conditional-create", "type")
def create(res_type: str):
    """Create a resource with a server-assigned id; with criteria, only if none matches."""
    body = _resource_body()
    criteria = _criteria()
    if criteria:
        stored, created = interactions.conditional_create(_repo(), res_type, body, criteria, _access())
        if not created:
            audit.note_resource(res_type, stored.res_id, stored.version)
            return _write_response(stored, 200, f"{res_type}/{stored.res_id} already matches the criteria")
    else:
        stored = interactions.create(_repo(), res_type, body, _access())
    return _write_response(stored, 201, f"Created {res_type}/{stored.res_id}")


@blp.route("/<rtype:res_type>", methods=["PUT"])
@interaction("conditional-update", "type")
def conditional_update(res_type: str):
    """Update the one resource the query matches (or create one when none does)."""
    stored, created = interactions.conditional_update(
        _repo(),
        res_type,
        _resource_body(),
        _criteria(),
        if_match=parse_etag(request.headers.get("If-Match")),
        update_create=bool(current_app.config.get("UPDATE_CREATE", True)),
        access=_access(),
    )
    return _update_response(stored, created)


@blp.route("/<rtype:res_type>", methods=["DELETE"])
@interaction("conditional-delete", "type")
def conditional_delete(res_type: str):
    """Delete what the query matches: one resource, or several when FHIR_CONDITIONAL_DELETE_MULTIPLE is on."""
    cfg = current_app.config
    deleted = interactions.conditional_delete(
        _repo(),
        res_type,
        _criteria(),
        multiple=bool(cfg.get("CONDITIONAL_DELETE_MULTIPLE")),
        limit=int(cfg.get("CONDITIONAL_DELETE_LIMIT", 100)),
        access=_access(),
    )
    names = ", ".join(f"{s.res_type}/{s.res_id}" for s in deleted)
    body = operation_outcome(
        [Issue(f"Deleted {names}", code="informational", severity="information")], "informational"
    )
    headers = {"ETag": etag(deleted[0].version)} if len(deleted) == 1 else {}
    return fhir_response(body, status=200, headers=headers)


@blp.route("/<rtype:res_type>/<fid:res_id>", methods=["GET"])
@interaction("read", "instance")
def read(res_type: str, res_id: str):
    """Read the current version."""
    stored = interactions.read(_repo(), res_type, res_id, _access())
    return _resource_response(stored)


@blp.route("/<rtype:res_type>/<fid:res_id>/_history/<fid:version_id>", methods=["GET"])
@interaction("vread", "instance")
def vread(res_type: str, res_id: str, version_id: str):
    """Read one version."""
    if not version_id.isdigit():
        raise NotFound(f"{res_type}/{res_id} has no version '{version_id}'")
    stored = interactions.vread(_repo(), res_type, res_id, int(version_id), _access())
    return _resource_response(stored)


def _resource_response(stored: Stored):
    """A stored version with its validators; 304 when the client has it; _summary/_elements applied."""
    headers = _version_headers(stored)
    audit.note_resource(stored.res_type, stored.res_id, stored.version)
    if not_modified(stored.version, stored.last_updated):
        return fhir_response(None, status=304, headers=headers)
    render = _renderer(stored.res_type, list(request.args.items(multi=True))) if request.args else None
    return fhir_response(render(stored) if render else stored.body, headers=headers)


@blp.route("/<rtype:res_type>/<fid:res_id>", methods=["PUT"])
@interaction("update", "instance")
def update(res_type: str, res_id: str):
    """Update (or, when enabled, create with the client's id)."""
    stored, created = interactions.update(
        _repo(),
        res_type,
        res_id,
        _resource_body(),
        if_match=parse_etag(request.headers.get("If-Match")),
        update_create=bool(current_app.config.get("UPDATE_CREATE", True)),
        access=_access(),
    )
    return _update_response(stored, created)


@blp.route("/<rtype:res_type>/<fid:res_id>", methods=["PATCH"])
@interaction("patch", "instance")
def patch(res_type: str, res_id: str):
    """JSON Patch, or JSON Merge Patch (application/merge-patch+json, or a plain JSON object)."""
    mime = require_json_body(allowed=(JSON_PATCH, MERGE_PATCH, JSON))
    document = jsonio.loads(request.get_data(cache=False) or b"null")
    merge = mime == MERGE_PATCH or (mime == JSON and isinstance(document, dict))
    stored = interactions.patch(
        _repo(),
        res_type,
        res_id,
        document,
        merge=merge,
        if_match=parse_etag(request.headers.get("If-Match")),
        access=_access(),
    )
    return _write_response(stored, 200, f"Patched {res_type}/{res_id} to version {stored.version}")


@blp.route("/<rtype:res_type>/<fid:res_id>", methods=["DELETE"])
@interaction("delete", "instance")
def delete(res_type: str, res_id: str):
    """Logical delete; repeating it is harmless."""
    stored = interactions.delete(_repo(), res_type, res_id, _access())
    body = operation_outcome(
        [Issue(f"Deleted {res_type}/{res_id}", code="informational", severity="information")], "informational"
    )
    return fhir_response(body, status=200, headers={"ETag": etag(stored.version)})


def _history_query(res_type: str | None = None, res_id: str | None = None) -> HistoryQuery:
    cfg = current_app.config
    counts = request.args.getlist("_count")
    limit = int(cfg["DEFAULT_PAGE_SIZE"])
    if len(counts) > 1:
        raise BadRequest("_count may be given once", expression="_count")
    if counts:
        if not counts[0].isdigit():
            raise BadRequest("_count must be a non-negative integer", expression="_count")
        limit = min(int(counts[0]), int(cfg["MAX_PAGE_SIZE"]))
    since = request.args.get("_since")
    at = request.args.get("_at")
    cursor = request.args.get("_cursor")
    before = after = None
    if cursor:
        if len(cursor) < 2 or cursor[0] not in "ba" or not cursor[1:].isdigit():
            raise BadRequest("_cursor is not a paging cursor issued by this server", expression="_cursor")
        before, after = (int(cursor[1:]), None) if cursor[0] == "b" else (None, int(cursor[1:]))
    action = "r" if res_id else "s"
    return HistoryQuery(
        visible=_access().versions_condition(SearchContext(session=db.session()), action),
        limit=limit,
        res_type=res_type,
        res_id=res_id,
        since=parse_range(since, "_since").low if since else None,
        at=parse_range(at, "_at") if at else None,
        before_seq=before,
        after_seq=after,
    )


def _history_response(query: HistoryQuery):
    versions, more = interactions.history(_repo(), query)
    audit.note_returned([(v.res_type, v.res_id) for v in versions])
    links = {"self": page_url()}
    paging_forward = query.after_seq is None
    if versions and (more if paging_forward else True):
        links["next"] = page_url(f"b{versions[-1].seq}")
    if versions and (query.before_seq is not None or (query.after_seq is not None and more)):
        links["previous"] = page_url(f"a{versions[0].seq}")
    return fhir_response(history_bundle(versions, links))


@blp.route("/_history", methods=["GET"])
@interaction("history-system", "system")
def history_system():
    """History of every resource on the server, newest first."""
    return _history_response(_history_query())


@blp.route("/<rtype:res_type>/_history", methods=["GET"])
@interaction("history-type", "type")
def history_type(res_type: str):
    """History of every resource of one type."""
    return _history_response(_history_query(res_type))


@blp.route("/<rtype:res_type>/<fid:res_id>/_history", methods=["GET"])
@interaction("history-instance", "instance")
def history_instance(res_type: str, res_id: str):
    """History of one resource."""
    check_type(res_type)
    query = _history_query(res_type, res_id)
    access = _access()
    if _repo().current(res_type, res_id) is None or (
        access.narrows(res_type) and not access.visible(db.session(), res_type, res_id, "r")
    ):
        raise NotFound(f"{res_type}/{res_id} is not known")
    return _history_response(query)


def _search_args() -> list[tuple[str, str]]:
    """Query parameters, plus the form body of ``POST _search`` (both count, as the spec says)."""
    args = list(request.args.items(multi=True))
    if request.method == "POST":
        require_json_body(allowed=("application/x-www-form-urlencoded",))
        args += list(request.form.items(multi=True))
    return args


def _renderer(res_type: str | None, args: list[tuple[str, str]]):
    """Apply _summary / _elements to each entry; None when entries are served exactly as stored."""
    values = dict(args)
    summary = parse_summary(values.get("_summary"))
    elements = parse_elements(values.get("_elements"), res_type)
    if summary in (None, "false", "count") and not elements:
        return None

    def render(s: Stored) -> str:
        resource = jsonio.loads_trusted(s.body or "{}")
        if elements:
            resource = select_elements(resource, elements)
        elif summary:
            resource = summarize(resource, summary)
        return jsonio.dumps(resource)

    return render


def _search_response(res_type: str | None, path: str, compartment: tuple[str, str] | None = None):
    cfg = current_app.config
    args = _search_args()
    render = _renderer(res_type, args)
    req = parse_request(
        res_type, args, default_count=int(cfg["DEFAULT_PAGE_SIZE"]), max_count=int(cfg["MAX_PAGE_SIZE"])
    )
    req.compartment = compartment
    ctx = SearchContext(
        session=db.session(),
        base_url=base_url(),
        strict=parse_prefer().get("handling") == "strict",
        access=_access(),
    )
    page = interactions.search(db.session(), req, ctx)
    audit.note_returned([(s.res_type, s.res_id) for s in (*page.matches, *page.included)])
    return fhir_response(searchset_bundle(page, base_url(), path, args, render))


@blp.route("/<rtype:res_type>", methods=["GET"])
@interaction("search-type", "type")
def search_type(res_type: str):
    """Search one resource type."""
    check_type(res_type)
    return _search_response(res_type, f"/{res_type}")


@blp.route("/<rtype:res_type>/_search", methods=["POST"])
def search_type_post(res_type: str):
    """Search one resource type with the parameters in a form body."""
    check_type(res_type)
    return _search_response(res_type, f"/{res_type}")


@blp.route("/<rtype:comp_type>/<fid:comp_id>/<rtype:res_type>", methods=["GET"])
def search_compartment(comp_type: str, comp_id: str, res_type: str):
    """Search the resources of one type in a compartment, e.g. a patient's Observations."""
    check_type(comp_type)
    check_type(res_type)
    member_params(comp_type, res_type)
    return _search_response(res_type, f"/{comp_type}/{comp_id}/{res_type}", (comp_type, comp_id))


@blp.route("/", methods=["GET"])
@interaction("search-system", "system")
def search_system():
    """Search across resource types (``_type`` narrows them)."""
    return _search_response(None, "")


@blp.route("/_search", methods=["POST"])
def search_system_post():
    """System search with the parameters in a form body."""
    return _search_response(None, "")


# -- $everything -----------------------------------------------------------------------------------------
def _everything_args() -> tuple[list[str] | None, str | None, int, str | None]:
    cfg = current_app.config
    args = request.args
    types = [t for t in args.get("_type", "").split(",") if t] or None
    since = args.get("_since")
    if since:
        parse_range(since, "_since")  # 400 when it is not a date
    count_arg = args.get("_count")
    count = int(cfg["DEFAULT_PAGE_SIZE"])
    if count_arg is not None:
        if not count_arg.isdigit() or int(count_arg) < 1:
            raise BadRequest("_count must be a positive integer", expression="_count")
        count = min(int(count_arg), int(cfg["MAX_PAGE_SIZE"]))
    return types, since, count, args.get("_cursor")


def _everything_bundle(entries: list[Stored], next_cursor: str | None, path: str) -> Any:
    audit.note_returned([(s.res_type, s.res_id) for s in entries])
    page = SearchPage(entries, [], None, next_cursor, None, [])
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "_cursor"]
    return fhir_response(searchset_bundle(page, base_url(), path, args))


@blp.route("/Patient/<fid:res_id>/$everything", methods=["GET"])
@interaction("everything", "instance")
def patient_everything(res_id: str):
    """The patient and every resource of their compartment that the token may see, paged."""
    types, since, count, cursor = _everything_args()
    access = _access()
    found = _repo().read("Patient", res_id)
    if (
        found is None
        or found.deleted
        or (access.narrowed and not access.visible(db.session(), "Patient", res_id))
    ):
        raise NotFound(f"Patient/{res_id} is not known")
    audit.note_resource("Patient", res_id)
    ctx = SearchContext(session=db.session(), base_url=base_url(), access=access)
    page = everything.everything(
        db.session(), ctx, res_id, types=types, since=since, count=count, cursor=cursor
    )
    return _everything_bundle(page.entries, page.next_cursor, f"/Patient/{res_id}/$everything")


@blp.route("/Patient/$everything", methods=["GET"])
def patients_everything():
    """Every patient the token may see, each followed by their record, paged."""
    types, since, count, cursor = _everything_args()
    ctx = SearchContext(session=db.session(), base_url=base_url(), access=_access())
    entries, next_cursor = everything.all_patients(
        db.session(), ctx, types=types, since=since, count=count, cursor=cursor
    )
    return _everything_bundle(entries, next_cursor, "/Patient/$everything")


# -- $validate -------------------------------------------------------------------------------------------
def _validation_outcome(res_type: str, res_id: str | None) -> Any:
    """$validate: 200 with an OperationOutcome that lists every problem, or says the resource is valid."""
    audit.note_detail(operation="$validate")
    body = _resource_body()
    if body.get("resourceType") == "Parameters":  # the resource in a "resource" parameter
        given = [p.get("resource") for p in body.get("parameter") or [] if p.get("name") == "resource"]
        if not given or not isinstance(given[0], dict):
            raise BadRequest("Parameters for $validate need a 'resource' parameter", expression="Parameters")
        body = given[0]
    if res_id is not None and body.get("id") not in (None, res_id):
        raise BadRequest("The resource's id differs from the id in the URL", expression=f"{res_type}.id")
    try:
        validate(body, res_type)
    except InvalidResource as exc:
        return fhir_response(operation_outcome(exc.issues, exc.code, exc.slug))
    ok = Issue(f"The {res_type} is valid", code="informational", severity="information")
    return fhir_response(operation_outcome([ok], "informational"))


@blp.route("/<rtype:res_type>/$validate", methods=["POST"])
@interaction("validate", "type")
def validate_type(res_type: str):
    """Check a resource against the R4 rules this server enforces, without storing it."""
    check_type(res_type)
    return _validation_outcome(res_type, None)


@blp.route("/<rtype:res_type>/<fid:res_id>/$validate", methods=["POST"])
def validate_instance(res_type: str, res_id: str):
    """Check a resource meant to update ``res_id``, without storing it."""
    check_type(res_type)
    audit.note_resource(res_type, res_id)
    return _validation_outcome(res_type, res_id)


# -- transaction and batch ---------------------------------------------------------------------------------
_ENTRY_SUBTYPE = {
    "POST": ("create", "C"),
    "PUT": ("update", "U"),
    "PATCH": ("patch", "U"),
    "DELETE": ("delete", "D"),
}


def _entry_subtype(e: transactions.Entry) -> tuple[str, str]:
    if e.method in _ENTRY_SUBTYPE:
        return _ENTRY_SUBTYPE[e.method]
    if e.res_id is None:
        return "search-type", "E"
    return ("vread", "R") if e.version else ("read", "R")


@blp.route("/", methods=["POST"])
@interaction("transaction", "system")
@interaction("batch", "system")
def bundle():
    """A transaction (all entries or none) or a batch (each entry on its own) Bundle."""
    cfg = current_app.config
    kind, entries = transactions.parse(_resource_body(), int(cfg["BUNDLE_MAX_ENTRIES"]), base_url())
    in_transaction = kind == "transaction"
    audit.note_bundle(kind, len(entries))
    session = db.session()

    def read(e: transactions.Entry, refs: list[tuple[str, str]], stored: Stored | None) -> None:
        subtype, action = _entry_subtype(e)
        entities = [(f"{stored.res_type}/{stored.res_id}", str(stored.version))] if stored else []
        audit.record_entry(
            session,
            subtype=subtype,
            action=action,
            entities=entities,
            returned=refs,
            in_transaction=in_transaction,
        )

    def failed(e: transactions.Entry, exc: FhirError) -> None:
        subtype, action = _entry_subtype(e)
        target = [(f"{e.res_type}/{e.res_id}", None)] if e.res_id else []
        outcome = operation_outcome(exc.issues, exc.code, exc.slug)
        audit.record_entry(
            session,
            subtype=subtype,
            action=action,
            entities=target,
            returned=[],
            failure=outcome,
            status=exc.status,
            in_transaction=False,
        )

    def search(e: transactions.Entry) -> str:
        req = parse_request(
            e.res_type,
            e.criteria,
            default_count=int(cfg["DEFAULT_PAGE_SIZE"]),
            max_count=int(cfg["MAX_PAGE_SIZE"]),
        )
        ctx = SearchContext(session=session, base_url=base_url(), access=_access())
        page = interactions.search(session, req, ctx)
        read(e, [(s.res_type, s.res_id) for s in (*page.matches, *page.included)], None)
        return searchset_bundle(page, base_url(), f"/{e.res_type}", e.criteria)

    hooks = transactions.Hooks(entry=lambda e: audit.entry(*_entry_subtype(e)), read=read, failed=failed)
    settings = transactions.Settings(
        update_create=bool(cfg.get("UPDATE_CREATE", True)),
        local_base=base_url(),
        search=search,
    )
    run = transactions.transaction if in_transaction else transactions.batch
    try:
        results = run(_repo(), entries, _access(), settings, hooks)
    except IntegrityError:
        raise Conflict("The transaction collided with a concurrent change; retry it") from None
    return fhir_response(_bundle_response(kind, entries, results))


def _bundle_response(kind: str, entries: list[transactions.Entry], results: dict[int, Any]) -> str:
    """The transaction-response or batch-response, entries in the request's order."""
    minimal = parse_prefer().get("return") == "minimal"
    base = base_url()
    parts = []
    for e in entries:
        out = results[e.index]
        response: dict[str, Any] = {"status": out.status}
        stored = out.stored
        if stored is not None:
            if out.location:
                response["location"] = f"{stored.res_type}/{stored.res_id}/_history/{stored.version}"
            response["etag"] = etag(stored.version)
            response["lastModified"] = db.format_instant(stored.last_updated)
        if isinstance(out.body, FhirError):
            response["outcome"] = operation_outcome(out.body.issues, out.body.code, out.body.slug)
        entry = ""
        text = out.body if isinstance(out.body, str) else (stored.body if stored is not None else None)
        if text and not minimal and e.method != "DELETE":
            if stored is not None:
                entry += f'"fullUrl":{jsonio.dumps(f"{base}/{stored.res_type}/{stored.res_id}")},'
            entry += f'"resource":{text},'
        parts.append("{" + entry + f'"response":{jsonio.dumps(response)}' + "}")
    return f'{{"resourceType":"Bundle","type":"{kind}-response","entry":[{",".join(parts)}]}}'
