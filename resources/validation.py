"""Validate resources with the fhir.resources R4B models, reporting one issue per problem with a FHIRPath."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fhir_api.errors import BadRequest, InvalidResource, Issue
from resources.registry import check_type

_CODES = {
    "missing": "required",
    "extra_forbidden": "structure",
    "model_type": "structure",
    "list_type": "structure",
    "dict_type": "structure",
}
MAX_ISSUES = 50


def fhirpath(resource_type: str, loc: tuple[Any, ...]) -> str:
    """('name', 0, '_given', 1) -> 'Patient.name[0].given[1]' (a primitive's ``_x`` part is element x)."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part and part != "__root__":
            if "[" in part or "(" in part or " " in part:  # pydantic union/function labels, not elements
                continue
            path += "." + (part[1:] if part.startswith("_") and len(part) > 1 else part)
    return path


def _diagnostic(err: dict[str, Any], expression: str) -> str:
    msg = str(err.get("msg", "invalid value"))
    value = err.get("input")
    if isinstance(value, str) and len(value) >= 2 and value in msg:  # never echo submitted data (PHI)
        msg = msg.replace(value, "<value>")
    return f"{expression}: {msg}"


def validate(resource: dict[str, Any], expected_type: str | None = None) -> None:
    """Raise InvalidResource listing every problem, or BadRequest when the body is not this type."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise BadRequest("The resource has no resourceType", expression="resourceType")
    if expected_type is not None and resource_type != expected_type:
        raise BadRequest(
            f"The body is a {resource_type} but the URL names {expected_type}", expression="resourceType"
        )
    model = check_type(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False)[:MAX_ISSUES]:
            loc = tuple(err.get("loc", ()))
            expression = fhirpath(resource_type, loc)
            issues.append(
                Issue(
                    _diagnostic(err, expression),
                    code=_CODES.get(err.get("type", ""), "value"),
                    expression=(expression,),
                )
            )
        raise InvalidResource(issues=issues) from None
    # models raising outside pydantic's wrapper (a url element given a number: AttributeError in fhir_core)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise InvalidResource(
            f"{resource_type}: the resource could not be validated ({type(exc).__name__})"
        ) from None
