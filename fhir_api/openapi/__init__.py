"""The OpenAPI 3.1 document of every route, served at /openapi.json and committed as ./openapi.json.

flask-smorest serves the document and knows the blueprints registered with it; ``init_app`` rebuilds its
``paths`` from the whole URL map (plain blueprints included: auth, docs) with what smorest cannot infer:
OperationOutcome errors, SMART security, resource-type enums, examples (``components``, ``operations``).
``fhir-api openapi -o openapi.json`` (``make openapi``) regenerates the committed copy, and
tests/contract fails when it and the code differ.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from typing import Any

from apispec import APISpec
from flask import Flask
from flask_smorest import Api
from flask_smorest.spec.plugins import FlaskPlugin
from flask_smorest.utils import load_info_from_docstring
from werkzeug.routing import Rule

from fhir_api.openapi import components
from fhir_api.openapi.components import SECURED, action_words, error_response_name
from fhir_api.openapi.operations import OPERATIONS, Doc

IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
# Not part of the API: Flask's static files (the app has none) and the route serving this document.
UNDOCUMENTED_ENDPOINTS = frozenset({"static", "api-docs.openapi_json"})
REGENERATE = "make openapi"  # = fhir-api openapi -o openapi.json


def template(path: str) -> str:
    """A path with its parameter names erased: /a/{x} and /a/{y} are one OpenAPI path."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_rule(rule: Rule) -> bool:
    """Whether a URL rule belongs in the document (everything but static files and the document itself)."""
    return rule.endpoint not in UNDOCUMENTED_ENDPOINTS


def operation_key(app: Flask, endpoint: str) -> str:
    """``<blueprint>.<view function name>``: stable, unlike the endpoints smorest numbers (``ui_8``)."""
    blueprint = endpoint.rpartition(".")[0]
    return f"{blueprint}.{app.view_functions[endpoint].__name__}"


def _permission(endpoint: str) -> tuple[str | None, str | None]:
    """The SMART action letter the guard checks for an endpoint, and the sentence that says so."""
    from fhir_api.auth.guard import ACTIONS, PER_ENTRY

    if endpoint in PER_ENTRY:
        return None, "Each entry needs the scopes the same request would need on its own."
    letter = ACTIONS.get(endpoint)
    if letter is None:
        return None, None
    return letter, (
        f"Needs a token whose scopes allow `{letter}` ({action_words(letter)}) on the resource type, "
        f"e.g. system/Patient.{letter}."
    )


def _rate_limited(endpoint: str) -> bool:
    from fhir_api.ratelimit import EXEMPT_ENDPOINTS

    return endpoint not in EXEMPT_ENDPOINTS


def _operation(app: Flask, rule: Rule, doc: Doc) -> dict[str, Any]:
    view = app.view_functions[rule.endpoint]
    info = load_info_from_docstring(view.__doc__ or "")
    op: dict[str, Any] = {"tags": [rule.endpoint.rpartition(".")[0]]}
    op.update({k: v for k, v in info.items() if v})
    if not doc.public:
        letter, sentence = _permission(rule.endpoint)
        if sentence:
            op["description"] = f"{op.get('description', '')}\n\n{sentence}".strip()
        if letter:
            op["x-smart-action"] = letter
    responses: dict[str, Any] = {str(status): dict(resp) for status, resp in sorted(doc.responses.items())}
    errors = set(doc.errors)
    if not doc.public:
        errors.add(401)
    if _rate_limited(rule.endpoint):
        errors.add(429)
    for status in sorted(errors):
        responses.setdefault(str(status), error_response_name(status))
    responses["default"] = error_response_name("default")
    op["responses"] = responses
    if doc.parameters:
        op["parameters"] = list(doc.parameters)
    if doc.body is not None:
        op["requestBody"] = doc.body
    if doc.public:
        op["security"] = []
    marks = getattr(view, "fhir_interactions", ())
    if marks:
        op["x-fhir-interactions"] = [code for code, _level in marks]
    op.update(doc.extra)
    return op


def _deprecated(app: Flask, rule: Rule, method: str, op: dict[str, Any]) -> dict[str, Any]:
    """``deprecated: true`` on the operations (or query parameters) that fhir_api/deprecation.py announces.

    A path entry marks the operations whose every URL lies under its prefix; one that covers only some of a
    rule's URLs (``/fhir/R4/Basic`` of ``/fhir/R4/{res_type}``) is announced by the headers alone.
    """
    from fhir_api import deprecation

    key = operation_key(app, rule.endpoint)
    fixed = rule.rule.split("<", 1)[0]
    whole = fixed if fixed == rule.rule else fixed[: fixed.rfind("/") + 1]  # whole segments all URLs share
    for entry in deprecation.entries(app):
        if entry.methods and method.upper() not in entry.methods:
            continue
        if (entry.endpoint is not None and entry.endpoint != key) or (
            entry.path is not None and not entry.covers_path(whole)
        ):
            continue
        notice = " ".join(
            part
            for part in (
                f"Deprecated since {entry.deprecated:%Y-%m-%d}"
                + (f"; sunset {entry.sunset:%Y-%m-%d}, then 410 Gone." if entry.sunset else "."),
                entry.note,
                f"See {entry.href}",
            )
            if part
        )
        if entry.parameter is None:
            op["deprecated"] = True
            op["description"] = f"{op.get('description', '')}\n\n{notice}".strip()
            if entry.sunset is not None:
                op["responses"].setdefault("410", error_response_name(410))
            continue
        params: list[Any] = []
        for name in op.get("parameters", []):
            param = components.PARAMETERS.get(name) if isinstance(name, str) else None
            if param is not None and param["in"] == "query" and param["name"] == entry.parameter:
                name = {
                    **param,
                    "deprecated": True,
                    "description": f"{param.get('description', '')} {notice}",
                }
            params.append(name)
        op["parameters"] = params
    return op


def _path_parameters(plugin: FlaskPlugin, rule: Rule) -> list[dict[str, Any]]:
    return [components.path_parameter(p["name"], p) for p in plugin.rule_to_params(rule)]


def _operation_ids(pairs: dict[str, list[tuple[str, str]]]) -> dict[tuple[str, str], str]:
    """One id per (path, method): the view's name, plus the method and the path's parameters when the
    view serves several (``audit_refuse_put_by_event_id``)."""
    ids: dict[tuple[str, str], str] = {}
    for key, served in pairs.items():
        base = key.replace(".", "_")
        methods = {m for _, m in served}
        paths = {p for p, _ in served}
        for path, method in served:
            name = base + (f"_{method}" if len(methods) > 1 else "")
            params = re.findall(r"\{(\w+)\}", path)
            if len(paths) > 1 and params:
                name += "_by_" + "_".join(params)
            if name in ids.values():  # two parameterless paths of one view
                name += "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
            ids[(path, method)] = name
    return ids


def init_app(app: Flask, api: Api) -> None:
    """Document every route registered so far (call it after the last blueprint)."""
    spec = api.spec
    components.register(spec)
    spec.options["security"] = [dict(requirement) for requirement in SECURED]
    plugin: FlaskPlugin = api.flask_plugin

    # Rules with a catch-all ``path`` converter last: where they overlap a precise rule (same template,
    # same method), Werkzeug routes to the precise one, so that one documents the path.
    rules = sorted(
        (r for r in app.url_map.iter_rules() if documented_rule(r)),
        key=lambda r: ("<path:" in r.rule, r.rule),
    )
    canonical: dict[str, Rule] = {}
    operations: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    served: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rule in rules:
        key = operation_key(app, rule.endpoint)
        doc = OPERATIONS.get(key)
        if doc is None:
            continue  # undocumented: tests/contract names it
        path_rule = canonical.setdefault(template(plugin.flaskpath2openapi(rule.rule)), rule)
        path = plugin.flaskpath2openapi(path_rule.rule)
        for method in sorted(m.lower() for m in rule.methods - IGNORED_METHODS):
            if method not in operations[path]:
                operations[path][method] = _deprecated(app, rule, method, _operation(app, rule, doc))
                served[key].append((path, method))
    for (path, method), operation_id in _operation_ids(served).items():
        operations[path][method]["operationId"] = operation_id

    tagged = {t["name"] for t in spec.to_dict().get("tags", [])}  # smorest tags its own blueprints
    for name in sorted({op["tags"][0] for ops in operations.values() for op in ops.values()} - tagged):
        spec.tag({"name": name, "description": _blueprint_description(app, name)})

    # smorest documented its blueprints' rules one by one; the document above replaces that (apispec has
    # no public way to remove a path, and a catch-all rule would otherwise leave a duplicate template).
    spec._paths.clear()
    for rule in canonical.values():
        path = plugin.flaskpath2openapi(rule.rule)
        spec.path(rule=rule, operations=operations[path], parameters=_path_parameters(plugin, rule))
    _prune(spec)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _prune(spec: APISpec) -> None:
    """Drop components nothing refers to (smorest's default error shapes, which this API never sends)."""
    sections = {
        "schemas": spec.components.schemas,
        "responses": spec.components.responses,
        "parameters": spec.components.parameters,
        "headers": spec.components.headers,
        "examples": spec.components.examples,
    }
    doc = spec.to_dict()
    pending = _refs(doc["paths"])
    reached: set[str] = set()
    while pending:
        target = pending.pop()
        reached.add(target)
        _, _, kind, name = target.split("/", 3)
        pending |= _refs(sections.get(kind, {}).get(name)) - reached
    for kind, section in sections.items():
        for name in [n for n in section if f"#/components/{kind}/{n}" not in reached]:
            del section[name]


def _blueprint_description(app: Flask, name: str) -> str:
    """A plain blueprint's tag: the first line of its module's docstring."""
    blueprint = app.blueprints[name]
    doc = sys.modules[blueprint.import_name].__doc__ or name
    return doc.strip().splitlines()[0]


# -- the committed copy ----------------------------------------------------------------------------------
def document(app: Flask) -> dict[str, Any]:
    """The app's document as plain JSON data."""
    api: Api = app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    return json.loads(json.dumps(api.spec.to_dict()))


def build() -> dict[str, Any]:
    """The document from an app of its own: no database is opened and no key is read, and the settings
    that would show in it are pinned, so any machine builds the same document."""
    from fhir_api import create_app
    from fhir_api.config import DEFAULTS

    pinned = {k: DEFAULTS[k] for k in ("API_TITLE", "API_VERSION", "OPENAPI_VERSION")}
    pinned["DEPRECATIONS"] = None  # an operator's FHIR_DEPRECATIONS: served, never committed
    app = create_app({"DATABASE_URL": "sqlite://", "PUBLIC_URL": None, "TESTING": True, **pinned})
    try:
        return document(app)
    finally:
        app.extensions["fhir_db"]["engine"].dispose()


def render(doc: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, two-space indent, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
