"""The CapabilityStatement, generated from the routes actually registered (never maintained by hand)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from fhir_api import db
from fhir_api.auth.discovery import capability_security
from fhir_api.http import base_url
from resources.protection import service as protection
from resources.registry import supported_types
from resources.search.definitions import params_for
from resources.search.query import supported_param_types

INSTANCE_ORDER = ["read", "vread", "update", "patch", "delete", "history-instance"]
TYPE_ORDER = ["create", "search-type", "history-type"]
SYSTEM_ORDER = ["transaction", "batch", "search-system", "history-system"]
VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"


TYPE_OVERRIDES: dict[str, Callable[[], dict[str, Any]]] = {}
# What a feature adds to a type's generic entry (operations, documentation), e.g. Subscription's $events.
TYPE_EXTRAS: dict[str, Callable[[], dict[str, Any]]] = {}
"""Resource types served by another package than the generic REST layer (the audit log's AuditEvent)."""


def implemented_interactions() -> dict[str, set[str]]:
    """Interaction codes by level, read from the ``fhir_interactions`` marks that views carry."""
    found: dict[str, set[str]] = {"instance": set(), "type": set(), "system": set()}
    for view in current_app.view_functions.values():
        for code, level in getattr(view, "fhir_interactions", ()):
            found[level].add(code)
    return found


PROTECTED_NOTE = (
    "Protected: values are stored encrypted and searched through keyed-hash (blind) indexes. {served}; "
    ":contains, :text and _sort on it are refused with 400."
)
_SERVED = {
    "string": "Starts-with and :exact are served",
    "token": "code, system|code, |code, system|, :not, :in, :not-in and :of-type are served",
    "date": "every prefix is served, exactly",
}


def search_params(res_type: str) -> list[dict[str, str]]:
    """The parameters the search engine can evaluate for a type, from the definitions registry; those over
    protected elements say how they are served."""
    protected = protection.current().protected_params(res_type)
    out = []
    for code, param in sorted(params_for(res_type).items()):
        if param.type in supported_param_types() and (param.expression or code in ("_id", "_lastUpdated")):
            entry = {"name": code, "definition": param.url, "type": param.type}
            if code in protected:
                served = _SERVED.get(param.type)
                entry["documentation"] = (
                    PROTECTED_NOTE.format(served=served)
                    if served
                    else "Protected: values are stored encrypted; this parameter cannot be searched."
                )
            out.append(entry)
    return out


def capability_statement() -> dict[str, Any]:
    found = implemented_interactions()
    per_type = [{"code": c} for c in INSTANCE_ORDER + TYPE_ORDER if c in found["instance"] | found["type"]]
    cfg = current_app.config
    resources = [
        TYPE_OVERRIDES[res_type]()
        if res_type in TYPE_OVERRIDES
        else {
            "type": res_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
            "interaction": per_type,
            "versioning": "versioned-update",
            "readHistory": "vread" in found["instance"],
            "updateCreate": bool(cfg.get("UPDATE_CREATE")),
            "conditionalCreate": "conditional-create" in found["type"],
            "conditionalRead": "not-supported",
            "conditionalUpdate": "conditional-update" in found["type"],
            "conditionalDelete": (
                ("multiple" if cfg.get("CONDITIONAL_DELETE_MULTIPLE") else "single")
                if "conditional-delete" in found["type"]
                else "not-supported"
            ),
            **({"searchParam": search_params(res_type)} if "search-type" in found["type"] else {}),
            **(
                {"operation": [{"name": "everything", "definition": EVERYTHING}]}
                if res_type == "Patient" and "everything" in found["instance"]
                else {}
            ),
            **(TYPE_EXTRAS[res_type]() if res_type in TYPE_EXTRAS else {}),
        }
        for res_type in supported_types()
    ]
    operations = [{"name": "validate", "definition": VALIDATE}] if "validate" in found["type"] else []
    if "bulk.export_system" in current_app.view_functions:
        operations.append({"name": "export", "definition": EXPORT})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": db.format_instant(db.now()),
        "publisher": "fhir-api",
        "kind": "instance",
        "software": {"name": "fhir-api", "version": cfg.get("API_VERSION", "0")},
        "implementation": {"description": "FHIR R4 server", "url": base_url()},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": capability_security(),
                "resource": resources,
                "interaction": [{"code": c} for c in SYSTEM_ORDER if c in found["system"]],
                **({"operation": operations} if operations else {}),
            }
        ],
    }
