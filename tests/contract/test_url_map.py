"""No undocumented route: Flask's URL map, the OpenAPI paths and the CapabilityStatement agree.

Routes are compared by template (``/fhir/R4/<rtype:res_type>`` is ``/fhir/R4/{res_type}``, parameter names
aside) and method. A new route fails here until fhir_api/openapi/operations.py describes it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from fhir_api import openapi

# Rules that are not part of the API, each with its reason.
EXCLUDED = {
    "static": "Flask's static-file route: the app ships no static files, and it is not an API operation",
    "api-docs.openapi_json": "serves the OpenAPI document itself",
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Werkzeug for every route
FIX = "describe it in fhir_api/openapi/operations.py, then run `make openapi`"

_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_PATH_ARG = re.compile(r"\{([^}]*)\}")


def _template(rule_or_path: str) -> str:
    return openapi.template(_RULE_ARG.sub(r"{\1}", rule_or_path))


def _rules(app) -> list[tuple[Rule, str]]:
    return [
        (rule, method)
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule)
        if rule.endpoint not in EXCLUDED
        for method in sorted(rule.methods - IGNORED_METHODS)
    ]


def _documented(doc: dict[str, Any]) -> dict[str, str]:
    """OpenAPI path template (names erased) -> the document's path."""
    return {openapi.template(path): path for path in doc["paths"]}


@pytest.fixture
def doc(app) -> dict[str, Any]:
    return openapi.document(app)


def test_every_route_is_documented(app, doc):
    paths = _documented(doc)
    missing = [
        f"{method} {rule.rule} (endpoint {rule.endpoint})"
        for rule, method in _rules(app)
        if method.lower() not in doc["paths"].get(paths.get(_template(rule.rule), ""), {})
    ]
    assert not missing, f"routes missing from the OpenAPI document ({FIX}):\n" + "\n".join(missing)


def test_every_documented_operation_is_routed(app, doc):
    routed = {(_template(rule.rule), method.lower()) for rule, method in _rules(app)}
    phantom = [
        f"{method.upper()} {path}"
        for path, item in sorted(doc["paths"].items())
        for method in item
        if method != "parameters" and (openapi.template(path), method) not in routed
    ]
    assert not phantom, "documented operations that no route serves:\n" + "\n".join(phantom)


# -- the CapabilityStatement ---------------------------------------------------------------------------
SAMPLE_ID = "example-1"
TYPE_INTERACTIONS = {
    "read": ("GET", "/{type}/{id}"),
    "vread": ("GET", "/{type}/{id}/_history/1"),
    "update": ("PUT", "/{type}/{id}"),
    "patch": ("PATCH", "/{type}/{id}"),
    "delete": ("DELETE", "/{type}/{id}"),
    "history-instance": ("GET", "/{type}/{id}/_history"),
    "history-type": ("GET", "/{type}/_history"),
    "create": ("POST", "/{type}"),
    "search-type": ("GET", "/{type}"),
}
CONDITIONAL = {
    "conditionalCreate": ("POST", "/{type}"),
    "conditionalUpdate": ("PUT", "/{type}"),
    "conditionalDelete": ("DELETE", "/{type}"),
}
SYSTEM_INTERACTIONS = {
    "transaction": ("POST", "/"),
    "batch": ("POST", "/"),
    "search-system": ("GET", "/"),
    "history-system": ("GET", "/_history"),
}
TYPE_OPERATIONS = {
    "everything": ("GET", "/{type}/{id}/$everything"),
    "events": ("GET", "/{type}/{id}/$events"),
}
SYSTEM_OPERATIONS = {"export": ("GET", "/$export"), "validate": ("POST", "/{type}/$validate")}


def _schema(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    return schema


def _accepts(schema: dict[str, Any], value: str) -> bool:
    """The keywords path parameter schemas use: enum and pattern."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    return not ("pattern" in schema and not re.search(schema["pattern"], value))


def _problem(app, doc: dict[str, Any], method: str, url: str) -> str | None:
    """Why ``method url`` is not a documented operation with a success response (None when it is)."""
    try:
        rule, args = app.url_map.bind("localhost").match(url, method=method, return_rule=True)
    except HTTPException as exc:
        return f"no route ({exc.code})"
    path = _documented(doc).get(_template(rule.rule))
    op = doc["paths"].get(path or "", {}).get(method.lower())
    if op is None:
        return f"routed to {rule.endpoint}, which the document lacks"
    if not any(status.startswith("2") for status in op["responses"]):
        return f"routed to {rule.endpoint}, documented without a success response"
    names = dict(zip(_RULE_ARG.findall(rule.rule), _PATH_ARG.findall(path or ""), strict=True))
    declared = {p["name"]: p for p in doc["paths"][path].get("parameters", [])}
    for arg, value in args.items():
        param = declared.get(names[arg])
        if param is None or not _accepts(_schema(doc, param["schema"]), str(value)):
            return f"its path parameter {names[arg]} does not accept {value!r}"
    return None


def _capability_requests(statement: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what the statement declares, method, URL) for every interaction and operation it lists."""
    rest = statement["rest"][0]
    out: list[tuple[str, str, str]] = []

    def add(what: str, method: str, pattern: str, res_type: str = "") -> None:
        url = "/fhir/R4" + pattern.replace("{type}", res_type).replace("{id}", SAMPLE_ID)
        out.append((what, method, url))

    for resource in rest["resource"]:
        res_type = resource["type"]
        for interaction in resource.get("interaction", []):
            code = interaction["code"]
            assert code in TYPE_INTERACTIONS, f"teach this test the URL of the {code} interaction"
            add(f"{res_type} {code}", *TYPE_INTERACTIONS[code], res_type)
        for flag, (method, pattern) in CONDITIONAL.items():
            if resource.get(flag) not in (None, False, "not-supported"):
                add(f"{res_type} {flag}", method, pattern, res_type)
        for operation in resource.get("operation", []):
            name = operation["name"]
            assert name in TYPE_OPERATIONS, f"teach this test the URL of ${name}"
            add(f"{res_type} ${name}", *TYPE_OPERATIONS[name], res_type)
    for interaction in rest.get("interaction", []):
        code = interaction["code"]
        assert code in SYSTEM_INTERACTIONS, f"teach this test the URL of the {code} interaction"
        add(f"system {code}", *SYSTEM_INTERACTIONS[code])
    for operation in rest.get("operation", []):
        name = operation["name"]
        assert name in SYSTEM_OPERATIONS, f"teach this test the URL of ${name}"
        method, pattern = SYSTEM_OPERATIONS[name]
        if "{type}" not in pattern:
            add(f"${name}", method, pattern)
            continue
        # A type-level operation: for every type the generic layer creates (AuditEvent has its own routes).
        for resource in rest["resource"]:
            if {"code": "create"} in resource.get("interaction", []):
                add(f"{resource['type']} ${name}", method, pattern, resource["type"])
    return out


def test_every_capability_is_a_documented_operation(app, client, doc):
    statement = client.get("/fhir/R4/metadata").get_json()
    requests = _capability_requests(statement)
    assert len(requests) > len(statement["rest"][0]["resource"])
    problems = [
        f"{what}: {method} {url}: {problem}"
        for what, method, url in requests
        if (problem := _problem(app, doc, method, url)) is not None
    ]
    assert not problems, f"CapabilityStatement entries without a documented operation ({FIX}):\n" + "\n".join(
        problems[:40]
    )
