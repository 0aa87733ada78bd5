"""Apply JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386, as fhirpy sends) to a stored resource."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from fhir_api.errors import BadRequest, Issue, Unprocessable


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise BadRequest("A JSON Patch body must be an array of operations")
    try:
        patch = jsonpatch.JsonPatch(operations)
        result = patch.apply(document, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Unprocessable(
            issues=[Issue(f"JSON Patch test failed: {_safe(exc)}", code="conflict")]
        ) from None
    except jsonpatch.JsonPatchConflict as exc:
        raise Unprocessable(
            issues=[Issue(f"JSON Patch cannot be applied: {_safe(exc)}", code="processing")]
        ) from None
    except (jsonpatch.InvalidJsonPatch, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise BadRequest(f"Invalid JSON Patch document: {_safe(exc)}") from None
    if not isinstance(result, dict):
        raise Unprocessable("The patch replaced the resource with something that is not an object")
    return result


def _safe(exc: Exception) -> str:
    """jsonpatch messages name paths and operations, not values; cut them short anyway."""
    return str(exc).split("\n")[0][:200]
