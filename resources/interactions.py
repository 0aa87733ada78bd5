"""The FHIR RESTful interactions (http://hl7.org/fhir/R4/http.html), generic over resource types.

Views translate HTTP into these calls; each write runs in one database transaction so that the
indexes, encryption and audit rows that later plug in here commit together with the version.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_api import db
from fhir_api.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, PreconditionFailed
from resources import jsonio
from resources.access import OWNED_TYPES, UNRESTRICTED, Access
from resources.patching import json_patch, merge_patch
from resources.registry import check_type
from resources.repository import HistoryQuery, ResourceRepository, Stored
from resources.search.query import SearchContext
from resources.search.results import SearchPage, SearchRequest, lock_criteria, match_ids
from resources.search.results import run as run_search
from resources.validation import validate

_ONE_MS = timedelta(milliseconds=1)

# res_type -> (session, current pointer or None, id, version, stamped resource or None for a delete) ->
# the resource to store: a type's own rules on what clients write (Subscription: the server sets status).
BEFORE_WRITE: dict[str, Callable[[Session, Any, str, int, dict[str, Any] | None], dict[str, Any] | None]] = {}


def new_id() -> str:
    return str(uuid.uuid4())


def stamp(
    resource: dict[str, Any], res_type: str, res_id: str, version: int, when: datetime
) -> dict[str, Any]:
    """The resource as stored: server-managed id and meta first, everything else exactly as sent."""
    meta = resource.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise BadRequest("meta must be a JSON object", expression=f"{res_type}.meta")
    stamped: dict[str, Any] = {
        "resourceType": res_type,
        "id": res_id,
        "meta": {**(meta or {}), "versionId": str(version), "lastUpdated": db.format_instant(when)},
    }
    for key, value in resource.items():
        if key not in ("resourceType", "id", "meta"):
            stamped[key] = value
    return stamped


def _check_body_type(resource: dict[str, Any], res_type: str) -> None:
    check_type(res_type)
    body_type = resource.get("resourceType")
    if body_type is None:
        raise BadRequest("The resource has no resourceType", expression="resourceType")
    if body_type != res_type:
        raise BadRequest(f"The body is a {body_type} but the URL names {res_type}", expression="resourceType")


def prevalidate(resource: dict[str, Any], res_type: str, res_id: str) -> None:
    """Validate before taking any lock: stamping later only changes server-managed fields."""
    validate(stamp(resource, res_type, res_id, 1, db.now()), res_type)


def _store(
    repo: ResourceRepository,
    current: Any,
    res_type: str,
    res_id: str,
    version: int,
    method: str,
    resource: dict[str, Any] | None,
) -> Stored:
    when = db.now()
    if current is not None and when <= current.last_updated:  # keep lastUpdated monotonic per resource
        when = current.last_updated + _ONE_MS
    stamped = None if resource is None else stamp(resource, res_type, res_id, version, when)
    hook = BEFORE_WRITE.get(res_type)
    if hook is not None:
        stamped = hook(repo.session, current, res_id, version, stamped)
    return repo.write(
        current,
        res_type=res_type,
        res_id=res_id,
        version=version,
        method=method,
        last_updated=when,
        resource=stamped,
    )


def _check_if_match(if_match: int | None, current_version: int) -> None:
    if if_match is not None and if_match != current_version:
        raise PreconditionFailed(
            f"If-Match names version {if_match} but the current version is {current_version}"
        )


def _integrity_conflict(exc: IntegrityError) -> Conflict:
    return Conflict("The resource was changed concurrently; retry the request")


def _require_reach(repo: ResourceRepository, access: Access, res_type: str, res_id: str, action: str) -> None:
    """404 for a resource outside the token's reach: its existence is not disclosed."""
    if access.narrows(res_type) and not access.visible(repo.session, res_type, res_id, action):
        raise NotFound(f"{res_type}/{res_id} is not known")


def _require_reach_after(
    repo: ResourceRepository, access: Access, res_type: str, res_id: str, action: str
) -> None:
    """Inside the write transaction: the written resource must still be within reach (else roll back)."""
    if access.narrows(res_type) and not access.visible(repo.session, res_type, res_id, action):
        raise Forbidden(f"The access token may not write a {res_type} outside the patients it is limited to")


def create(
    repo: ResourceRepository, res_type: str, resource: dict[str, Any], access: Access = UNRESTRICTED
) -> Stored:
    _check_body_type(resource, res_type)
    res_id = new_id()  # a client-supplied id is ignored on create, as the spec requires
    prevalidate(resource, res_type, res_id)
    with db.write_transaction(repo.session, single_batch=not access.narrows(res_type)):
        return create_in(repo, res_type, res_id, resource, access)


def create_in(
    repo: ResourceRepository, res_type: str, res_id: str, resource: dict[str, Any], access: Access
) -> Stored:
    """The create itself, inside the caller's write transaction (the body already validated)."""
    stored = _store(repo, None, res_type, res_id, 1, "POST", resource)
    _require_reach_after(repo, access, res_type, res_id, "c")
    return stored


def read(repo: ResourceRepository, res_type: str, res_id: str, access: Access = UNRESTRICTED) -> Stored:
    check_type(res_type)
    found = repo.read(res_type, res_id)
    if found is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    _require_reach(repo, access, res_type, res_id, "r")
    if found.deleted:
        raise Gone(f"{res_type}/{res_id} was deleted", headers={"ETag": f'W/"{found.version}"'})
    return found


def vread(
    repo: ResourceRepository, res_type: str, res_id: str, version: int, access: Access = UNRESTRICTED
) -> Stored:
    check_type(res_type)
    # reach first: a hidden resource and an absent one must answer alike (no version count leaks)
    _require_reach(repo, access, res_type, res_id, "r")
    # then the version itself, by its own content: one the token may not see reads as one that never was
    narrowed = access.narrows(res_type)
    visible = access.versions_condition(SearchContext(session=repo.session), "r") if narrowed else None
    found = repo.vread(res_type, res_id, version, visible)
    if found is None:
        raise NotFound(f"{res_type}/{res_id} has no version {version}")
    if found.deleted:
        raise Gone(f"Version {version} of {res_type}/{res_id} is a deletion")
    return found


def update(
    repo: ResourceRepository,
    res_type: str,
    res_id: str,
    resource: dict[str, Any],
    *,
    if_match: int | None,
    update_create: bool,
    access: Access = UNRESTRICTED,
) -> tuple[Stored, bool]:
    """Returns the new version and whether it was created (update-as-create)."""
    check_update_body(resource, res_type, res_id)
    prevalidate(resource, res_type, res_id)
    try:
        with db.write_transaction(repo.session, single_batch=not access.narrows(res_type)):
            return update_in(repo, res_type, res_id, resource, if_match, update_create, access)
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None


def check_update_body(resource: dict[str, Any], res_type: str, res_id: str) -> None:
    _check_body_type(resource, res_type)
    body_id = resource.get("id")
    if body_id is None:
        raise BadRequest(
            "The resource must carry an id equal to the id in the URL", expression=f"{res_type}.id"
        )
    if body_id != res_id:
        raise BadRequest("The id in the body differs from the id in the URL", expression=f"{res_type}.id")


def update_in(
    repo: ResourceRepository,
    res_type: str,
    res_id: str,
    resource: dict[str, Any],
    if_match: int | None,
    update_create: bool,
    access: Access = UNRESTRICTED,
) -> tuple[Stored, bool]:
    """The update itself, inside the caller's write transaction."""
    current = repo.current(res_type, res_id, lock=True)
    if current is None:
        if if_match is not None:
            raise PreconditionFailed(f"If-Match given but {res_type}/{res_id} does not exist")
        if not update_create:
            raise NotFound(f"{res_type}/{res_id} does not exist and update-as-create is disabled")
        access.require(res_type, "c")
        stored = _store(repo, None, res_type, res_id, 1, "PUT", resource)
        _require_reach_after(repo, access, res_type, res_id, "c")
        return stored, True
    if not current.deleted or res_type in OWNED_TYPES:  # another client's, even deleted, is unknown
        _require_reach(repo, access, res_type, res_id, "u")
    _check_if_match(if_match, current.version)
    stored = _store(repo, current, res_type, res_id, current.version + 1, "PUT", resource)
    _require_reach_after(repo, access, res_type, res_id, "u")
    return stored, False


def patch(
    repo: ResourceRepository,
    res_type: str,
    res_id: str,
    document: Any,
    *,
    merge: bool,
    if_match: int | None,
    access: Access = UNRESTRICTED,
) -> Stored:
    check_type(res_type)
    try:
        with db.write_transaction(repo.session, single_batch=not access.narrows(res_type)):
            return patch_in(repo, res_type, res_id, document, merge=merge, if_match=if_match, access=access)
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None


def patch_in(
    repo: ResourceRepository,
    res_type: str,
    res_id: str,
    document: Any,
    *,
    merge: bool,
    if_match: int | None,
    access: Access,
) -> Stored:
    """The patch itself, inside the caller's write transaction."""
    current = repo.current(res_type, res_id, lock=True)
    if current is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    _require_reach(repo, access, res_type, res_id, "u")
    if current.deleted:
        raise Gone(f"{res_type}/{res_id} was deleted")
    _check_if_match(if_match, current.version)
    stored = repo.vread(res_type, res_id, current.version)
    assert stored is not None and stored.body is not None
    original = jsonio.loads_trusted(stored.body)
    if merge:
        if not isinstance(document, dict):
            raise BadRequest("A merge patch body must be a JSON object")
        patched = merge_patch(original, document)
    else:
        patched = json_patch(original, document)
    if patched.get("resourceType") != res_type or patched.get("id") != res_id:
        raise BadRequest("A patch may not change resourceType or id")
    version = current.version + 1
    validate(stamp(patched, res_type, res_id, version, db.now()), res_type)
    stored = _store(repo, current, res_type, res_id, version, "PATCH", patched)
    _require_reach_after(repo, access, res_type, res_id, "u")
    return stored


def delete(repo: ResourceRepository, res_type: str, res_id: str, access: Access = UNRESTRICTED) -> Stored:
    """Logical delete: a new, empty version. Deleting a deleted resource changes nothing."""
    check_type(res_type)
    try:
        with db.write_transaction(repo.session, single_batch=True):
            return delete_in(repo, res_type, res_id, access)
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None


def delete_in(repo: ResourceRepository, res_type: str, res_id: str, access: Access) -> Stored:
    _require_reach(repo, access, res_type, res_id, "d")
    return _delete_locked(repo, res_type, res_id)


def _delete_locked(repo: ResourceRepository, res_type: str, res_id: str) -> Stored:
    current = repo.current(res_type, res_id, lock=True)
    if current is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    if current.deleted:
        found = repo.vread(res_type, res_id, current.version)
        assert found is not None
        return found
    return _store(repo, current, res_type, res_id, current.version + 1, "DELETE", None)


def history(repo: ResourceRepository, query: HistoryQuery) -> tuple[list[Stored], bool]:
    if query.res_type:
        check_type(query.res_type)
    rows, more = repo.history(query)
    return list(rows), more


def search(session: Session, req: SearchRequest, ctx: SearchContext) -> SearchPage:
    """Type or system search; authorization filters and the audit record will wrap this one call."""
    if req.res_type:
        check_type(req.res_type)
    return run_search(session, req, ctx)


# -- conditional interactions (http://hl7.org/fhir/R4/http.html#ccreate) -----------------------------------
def _matches(
    repo: ResourceRepository,
    res_type: str,
    criteria: list[tuple[str, str]],
    limit: int,
    access: Access = UNRESTRICTED,
) -> list[str]:
    """Ids matching the criteria among those within reach, inside the caller's transaction, after taking
    the criteria's lock."""
    if not [name for name, _ in criteria if name not in ("_format", "_pretty")]:
        raise BadRequest("A conditional interaction needs search criteria")
    lock_criteria(repo.session, res_type, criteria)
    return match_ids(repo.session, res_type, criteria, limit, access)


def conditional_create(
    repo: ResourceRepository,
    res_type: str,
    resource: dict[str, Any],
    criteria: list[tuple[str, str]],
    access: Access = UNRESTRICTED,
) -> tuple[Stored, bool]:
    """0 matches: create (True); 1 match: that resource, untouched (False); several: 412."""
    _check_body_type(resource, res_type)
    res_id = new_id()
    prevalidate(resource, res_type, res_id)
    with db.write_transaction(repo.session, single_batch=not access.narrows(res_type)):
        existing = existing_match(repo, res_type, criteria, access)
        if existing is not None:
            return existing, False
        return create_in(repo, res_type, res_id, resource, access), True


def existing_match(
    repo: ResourceRepository, res_type: str, criteria: list[tuple[str, str]], access: Access
) -> Stored | None:
    """Conditional create's test, inside the caller's write transaction: the one match, None, or 412."""
    found = _matches(repo, res_type, criteria, 2, access)
    if len(found) > 1:
        raise PreconditionFailed("The If-None-Exist criteria match more than one resource")
    if not found:
        return None
    existing = repo.read(res_type, found[0])
    assert existing is not None
    return existing


def conditional_update(
    repo: ResourceRepository,
    res_type: str,
    resource: dict[str, Any],
    criteria: list[tuple[str, str]],
    *,
    if_match: int | None,
    update_create: bool,
    access: Access = UNRESTRICTED,
) -> tuple[Stored, bool]:
    """1 match: update it; 0: create (with the body's id if given); several: 412."""
    _check_body_type(resource, res_type)
    body_id = resource.get("id")
    prevalidate(resource, res_type, body_id or "placeholder")
    try:
        with db.write_transaction(repo.session, single_batch=not access.narrows(res_type)):
            return conditional_update_in(
                repo,
                res_type,
                resource,
                criteria,
                if_match=if_match,
                update_create=update_create,
                access=access,
            )
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None


def conditional_update_in(
    repo: ResourceRepository,
    res_type: str,
    resource: dict[str, Any],
    criteria: list[tuple[str, str]],
    *,
    if_match: int | None,
    update_create: bool,
    access: Access,
    new: str | None = None,
) -> tuple[Stored, bool]:
    """The conditional update itself, inside the caller's write transaction (``new``: the id to create
    with when nothing matches and the body has none)."""
    body_id = resource.get("id")
    found = _matches(repo, res_type, criteria, 2, access)
    if len(found) > 1:
        raise PreconditionFailed("The conditional update criteria match more than one resource")
    if found:
        if body_id is not None and body_id != found[0]:
            raise BadRequest(
                "The id in the body differs from the resource the criteria match",
                expression=f"{res_type}.id",
            )
        matched = {**resource, "id": found[0]}
        return update_in(repo, res_type, found[0], matched, if_match, True, access)
    if if_match is not None:
        raise PreconditionFailed("If-Match given but no resource matches the criteria")
    if body_id is not None:
        return update_in(repo, res_type, body_id, resource, None, update_create, access)
    access.require(res_type, "c")
    new = new or new_id()
    stored = _store(repo, None, res_type, new, 1, "PUT", resource)
    _require_reach_after(repo, access, res_type, new, "c")
    return stored, True


def conditional_delete_in(
    repo: ResourceRepository,
    res_type: str,
    criteria: list[tuple[str, str]],
    *,
    multiple: bool,
    limit: int,
    access: Access,
) -> list[Stored]:
    found = _matches(repo, res_type, criteria, limit + 1 if multiple else 2, access)
    if not found:
        raise NotFound(f"No {res_type} matches the conditional delete criteria")
    if len(found) > 1 and not multiple:
        raise PreconditionFailed("The conditional delete criteria match more than one resource")
    if len(found) > limit:
        raise PreconditionFailed(f"The criteria match more than {limit} resources; narrow them")
    return [_delete_locked(repo, res_type, res_id) for res_id in found]


def conditional_delete(
    repo: ResourceRepository,
    res_type: str,
    criteria: list[tuple[str, str]],
    *,
    multiple: bool,
    limit: int,
    access: Access = UNRESTRICTED,
) -> list[Stored]:
    """Delete what the criteria match: one, or (when enabled) up to ``limit``; several otherwise 412."""
    check_type(res_type)
    try:
        with db.write_transaction(repo.session):
            return conditional_delete_in(
                repo, res_type, criteria, multiple=multiple, limit=limit, access=access
            )
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None
