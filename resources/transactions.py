"""``POST /fhir/R4`` with a ``transaction`` or ``batch`` Bundle (http://hl7.org/fhir/R4/http.html#transaction).

A transaction runs every entry in one database transaction, in the order the specification gives (DELETE,
POST, PUT/PATCH, GET): ids are assigned to the new resources first, then every reference to a ``urn:uuid:``
or ``urn:oid:`` fullUrl is rewritten, wherever it sits, and conditional references (``Patient?identifier=``)
are resolved to the one resource they match. Any failing entry rolls back everything, its error naming the
entry. A batch runs each entry on its own, each with its own status or OperationOutcome. Entries go
through the same interactions as single requests (validation, encryption, authorization, audit).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from fhir_api import db
from fhir_api.errors import BadRequest, FhirError, NotFound, PayloadTooLarge, PreconditionFailed
from resources import interactions, jsonio
from resources.access import Access
from resources.registry import check_type
from resources.repository import ResourceRepository, Stored
from resources.search.results import match_ids

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
ACTIONS = {"DELETE": "d", "POST": "c", "PUT": "u", "PATCH": "u", "GET": "r", "HEAD": "r"}


@dataclass
class Entry:
    """One entry's request, parsed."""

    index: int
    method: str
    res_type: str
    res_id: str | None
    version: str | None
    criteria: list[tuple[str, str]]
    full_url: str | None
    resource: dict[str, Any] | None
    if_match: int | None
    if_none_exist: list[tuple[str, str]]
    new_id: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass
class Outcome:
    """What one entry answered: a status line, the version it touched, or an OperationOutcome."""

    status: str
    stored: Stored | None = None
    body: str | dict[str, Any] | None = None  # GET results, or an OperationOutcome
    location: bool = True


@dataclass
class Hooks:
    """What the caller (the view) does around entries: the audit log's per-entry context and records."""

    entry: Callable[[Entry], Any] = lambda _e: nullcontext()
    read: Callable[[Entry, list[tuple[str, str]], Stored | None], None] = lambda *_a: None
    failed: Callable[[Entry, FhirError], None] = lambda *_a: None


@dataclass
class Settings:
    update_create: bool
    local_base: str
    search: Callable[[Entry], str] = field(default=lambda _e: "")


# -- parsing ---------------------------------------------------------------------------------------------
def parse(bundle: Any, max_entries: int, local_base: str) -> tuple[str, list[Entry]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base needs a Bundle of type batch or transaction", expression="Bundle")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest("Bundle.type must be batch or transaction", expression="Bundle.type")
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise BadRequest("Bundle.entry must be a list", expression="Bundle.entry")
    if len(raw) > max_entries:
        raise PayloadTooLarge(
            f"The bundle has {len(raw)} entries; this server takes at most {max_entries} per bundle "
            "(FHIR_BUNDLE_MAX_ENTRIES): split it"
        )
    entries = [_entry(i, e, local_base) for i, e in enumerate(raw)]
    urls = [e.full_url for e in entries if e.full_url]
    if len(urls) != len(set(urls)):
        raise BadRequest("Two entries share a fullUrl", expression="Bundle.entry.fullUrl")
    return kind, entries


def _entry(i: int, raw: Any, local_base: str) -> Entry:
    where = f"Bundle.entry[{i}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise BadRequest(f"{where} has no request", expression=f"{where}.request")
    req = raw["request"]
    method = str(req.get("method", "")).upper()
    if method not in ORDER:
        raise BadRequest(
            f"{where}.request.method must be one of {', '.join(ORDER)}", expression=f"{where}.request"
        )
    url = str(req.get("url") or "")
    if url.startswith(local_base + "/"):
        url = url[len(local_base) + 1 :]
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise BadRequest(f"{where}.request.url names no resource type", expression=f"{where}.request.url")
    res_type = parts[0]
    res_id = parts[1] if len(parts) > 1 else None
    version = parts[3] if len(parts) == 4 and parts[2] == "_history" else None
    if len(parts) > 4 or (len(parts) in (3, 4) and parts[2] != "_history") or (res_id == "_search"):
        raise BadRequest(
            f"{where}.request.url {url!r} is not an interaction bundles support here",
            expression=f"{where}.request.url",
        )
    resource = raw.get("resource")
    if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
        raise BadRequest(f"{where} ({method}) carries no resource", expression=f"{where}.resource")
    criteria = parse_qsl(query, keep_blank_values=True)
    none_exist = str(req.get("ifNoneExist") or "")
    if_match = None
    if req.get("ifMatch"):
        from fhir_api.http import parse_etag

        if_match = parse_etag(str(req["ifMatch"]))
    return Entry(
        index=i,
        method=method,
        res_type=res_type,
        res_id=res_id,
        version=version,
        criteria=criteria,
        full_url=raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None,
        resource=resource if isinstance(resource, dict) else None,
        if_match=if_match,
        if_none_exist=parse_qsl(none_exist.lstrip("?"), keep_blank_values=True),
    )


def _patch_document(e: Entry) -> tuple[Any, bool]:
    """A PATCH entry's body: a Binary holding a JSON Patch (or a merge patch)."""
    res = e.resource or {}
    if res.get("resourceType") != "Binary" or not isinstance(res.get("data"), str):
        raise BadRequest(
            f"{e.where}: a PATCH entry carries a Binary with a JSON Patch (contentType "
            "application/json-patch+json) in data",
            expression=f"{e.where}.resource",
        )
    try:
        document = jsonio.loads(base64.b64decode(res["data"]))
    except ValueError:
        raise BadRequest(
            f"{e.where}: the Binary's data is not base64 JSON", expression=f"{e.where}.resource.data"
        ) from None
    return document, res.get("contentType") == "application/merge-patch+json"


# -- references ------------------------------------------------------------------------------------------
def _rewrite(node: Any, ids: dict[str, str], resolve: Callable[[str], str | None]) -> Any:
    """Every string equal to a bundle fullUrl becomes the reference it was given; a ``reference`` that is a
    search becomes the one resource it matches; narrative links to fullUrls are rewritten too."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = ids.get(value) or resolve(value) or value
            elif key == "div" and isinstance(value, str) and "urn:" in value:
                for old, new in ids.items():
                    value = value.replace(f'"{old}"', f'"{new}"')
                out[key] = value
            else:
                out[key] = _rewrite(value, ids, resolve)
        return out
    if isinstance(node, list):
        return [_rewrite(v, ids, resolve) for v in node]
    if isinstance(node, str) and node in ids:
        return ids[node]
    return node


def _conditional_resolver(repo: ResourceRepository, access: Access) -> Callable[[str], str | None]:
    cache: dict[str, str] = {}

    def resolve(ref: str) -> str | None:
        if "?" not in ref or ref.startswith(("http://", "https://", "urn:", "#")):
            if ref.startswith(("urn:uuid:", "urn:oid:")):
                raise BadRequest(f"The reference {ref} names no fullUrl in this bundle")
            return None
        if ref in cache:
            return cache[ref]
        res_type, _, query = ref.partition("?")
        check_type(res_type)
        found = match_ids(repo.session, res_type, parse_qsl(query, keep_blank_values=True), 2, access)
        if len(found) != 1:
            what = "nothing" if not found else "more than one resource"
            raise PreconditionFailed(f"The conditional reference {ref} matches {what}")
        cache[ref] = f"{res_type}/{found[0]}"
        return cache[ref]

    return resolve


# -- running ---------------------------------------------------------------------------------------------
def _check_allowed(e: Entry, access: Access) -> None:
    check_type(e.res_type)
    action = "s" if e.method in ("GET", "HEAD") and e.res_id is None else ACTIONS[e.method]
    access.require(e.res_type, action)
    if e.method in ("POST", "PUT") and (e.resource or {}).get("resourceType") != e.res_type:
        raise BadRequest(
            f"{e.where}: the resource is a {(e.resource or {}).get('resourceType')} but the url names "
            f"{e.res_type}",
            expression=f"{e.where}.resource.resourceType",
        )


def _prevalidate(e: Entry) -> None:
    if e.method == "POST":
        interactions.prevalidate(e.resource or {}, e.res_type, "placeholder")
    elif e.method == "PUT":
        body = e.resource or {}
        if e.res_id is not None:
            interactions.check_update_body(body, e.res_type, e.res_id)
        interactions.prevalidate(body, e.res_type, e.res_id or body.get("id") or "placeholder")


def _check_and_validate(e: Entry, access: Access) -> None:
    _check_allowed(e, access)
    _prevalidate(e)


def _read(repo: ResourceRepository, e: Entry, access: Access, settings: Settings, hooks: Hooks) -> Outcome:
    if e.res_id is None:
        body = settings.search(e)
        return Outcome("200 OK", body=body, location=False)
    if e.version is not None:
        if not e.version.isdigit():
            raise NotFound(f"{e.res_type}/{e.res_id} has no version {e.version!r}")
        stored = interactions.vread(repo, e.res_type, e.res_id, int(e.version), access)
    else:
        stored = interactions.read(repo, e.res_type, e.res_id, access)
    hooks.read(e, [(e.res_type, e.res_id)], stored)
    return Outcome("200 OK", stored=stored, body=stored.body, location=False)


def _write(repo: ResourceRepository, e: Entry, access: Access, settings: Settings) -> Outcome:
    if e.method == "DELETE":
        if e.res_id is None:
            deleted = interactions.conditional_delete_in(
                repo, e.res_type, e.criteria, multiple=False, limit=1, access=access
            )
            return Outcome("204 No Content", stored=deleted[0], location=False)
        return Outcome(
            "204 No Content",
            stored=interactions.delete_in(repo, e.res_type, e.res_id, access),
            location=False,
        )
    if e.method == "POST":
        if e.new_id is None:  # a conditional create that matched: nothing written
            raise AssertionError("matched creates are answered before writes")
        return Outcome(
            "201 Created", stored=interactions.create_in(repo, e.res_type, e.new_id, e.resource or {}, access)
        )
    if e.method == "PATCH":
        if e.res_id is None:
            raise BadRequest(
                f"{e.where}: conditional PATCH is not supported", expression=f"{e.where}.request.url"
            )
        document, merge = _patch_document(e)
        stored = interactions.patch_in(
            repo, e.res_type, e.res_id, document, merge=merge, if_match=e.if_match, access=access
        )
        return Outcome("200 OK", stored=stored)
    body = e.resource or {}
    if e.res_id is None:
        stored, created = interactions.conditional_update_in(
            repo,
            e.res_type,
            body,
            e.criteria,
            if_match=e.if_match,
            update_create=settings.update_create,
            access=access,
            new=e.new_id,
        )
    else:
        stored, created = interactions.update_in(
            repo, e.res_type, e.res_id, body, e.if_match, settings.update_create, access
        )
    return Outcome("201 Created" if created else "200 OK", stored=stored)


def _in_entry(e: Entry, run: Callable[[], Any]) -> Any:
    """Errors say which entry failed."""
    try:
        return run()
    except FhirError as exc:
        target = f"{e.res_type}/{e.res_id}" if e.res_id else e.res_type
        exc.issues = [
            replace(
                issue,
                diagnostics=issue.diagnostics
                if issue.diagnostics.startswith("Bundle.entry[")
                else f"{e.where} ({e.method} {target}): {issue.diagnostics}",
                expression=issue.expression or (e.where,),
            )
            for issue in exc.issues
        ]
        raise


def transaction(
    repo: ResourceRepository, entries: list[Entry], access: Access, settings: Settings, hooks: Hooks
) -> dict[int, Outcome]:
    """All entries in one database transaction, or none."""
    for e in entries:
        _in_entry(e, lambda e=e: _check_and_validate(e, access))
    ordered = sorted(entries, key=lambda e: (ORDER[e.method], e.index))
    results: dict[int, Outcome] = {}
    with db.write_transaction(repo.session):
        for e in (x for x in ordered if x.method == "DELETE"):
            with hooks.entry(e):
                results[e.index] = _in_entry(e, lambda e=e: _write(repo, e, access, settings))
        ids = _assign_ids(repo, ordered, access, results, hooks)
        resolve = _conditional_resolver(repo, access)
        for e in ordered:
            if e.method in ("POST", "PUT") and e.index not in results:
                e.resource = _in_entry(e, lambda e=e: _rewrite(e.resource, ids, resolve))
        for e in ordered:
            if e.method in ("POST", "PUT", "PATCH") and e.index not in results:
                with hooks.entry(e):
                    results[e.index] = _in_entry(e, lambda e=e: _write(repo, e, access, settings))
        for e in (x for x in ordered if x.method in ("GET", "HEAD")):
            with hooks.entry(e):
                results[e.index] = _in_entry(e, lambda e=e: _read(repo, e, access, settings, hooks))
    return results


def _assign_ids(
    repo: ResourceRepository, ordered: list[Entry], access: Access, results: dict[int, Outcome], hooks: Hooks
) -> dict[str, str]:
    """fullUrl -> Type/id for every entry that creates or updates: new ids for creates, the match for
    conditional creates that find one (answered 200 right away, nothing written)."""
    ids: dict[str, str] = {}
    for e in ordered:
        if e.method == "POST":
            if e.if_none_exist:
                existing = _in_entry(
                    e,
                    lambda e=e: Outcome(
                        "200 OK",
                        stored=interactions.existing_match(repo, e.res_type, e.if_none_exist, access),
                    ),
                )
                if existing.stored is not None:
                    results[e.index] = existing
                    hooks.read(e, [(e.res_type, existing.stored.res_id)], existing.stored)
                    if e.full_url:
                        ids[e.full_url] = f"{e.res_type}/{existing.stored.res_id}"
                    continue
            e.new_id = interactions.new_id()
            if e.full_url:
                ids[e.full_url] = f"{e.res_type}/{e.new_id}"
        elif e.method == "PUT" and e.full_url:
            if e.res_id is not None:
                ids[e.full_url] = f"{e.res_type}/{e.res_id}"
            else:
                found = _in_entry(e, lambda e=e: _one_or_new(repo, e, access))
                ids[e.full_url] = f"{e.res_type}/{found}"
    return ids


def _one_or_new(repo: ResourceRepository, e: Entry, access: Access) -> str:
    found = match_ids(repo.session, e.res_type, e.criteria, 2, access)
    if len(found) > 1:
        raise PreconditionFailed("The conditional update criteria match more than one resource")
    if found:
        return found[0]
    e.new_id = (e.resource or {}).get("id") or interactions.new_id()
    return e.new_id


def batch(
    repo: ResourceRepository, entries: list[Entry], access: Access, settings: Settings, hooks: Hooks
) -> dict[int, Outcome]:
    """Each entry on its own: its own transaction, its own status or OperationOutcome."""
    results: dict[int, Outcome] = {}
    for e in entries:
        with hooks.entry(e):
            try:
                results[e.index] = _in_entry(e, lambda e=e: _batch_entry(repo, e, access, settings, hooks))
            except FhirError as exc:
                hooks.failed(e, exc)
                results[e.index] = Outcome(f"{exc.status} {exc.title}", body=exc, location=False)
    return results


def _batch_entry(
    repo: ResourceRepository, e: Entry, access: Access, settings: Settings, hooks: Hooks
) -> Outcome:
    _check_allowed(e, access)
    _prevalidate(e)
    if e.method in ("GET", "HEAD"):
        return _read(repo, e, access, settings, hooks)
    if e.method == "POST" and e.if_none_exist:
        with db.write_transaction(repo.session):
            existing = interactions.existing_match(repo, e.res_type, e.if_none_exist, access)
            if existing is not None:
                hooks.read(e, [(e.res_type, existing.res_id)], existing)
                return Outcome("200 OK", stored=existing)
            e.new_id = interactions.new_id()
            return _write(repo, e, access, settings)
    if e.method == "POST":
        e.new_id = interactions.new_id()
    with db.write_transaction(repo.session):
        return _write(repo, e, access, settings)
