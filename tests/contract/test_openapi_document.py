"""The document is valid OpenAPI 3.1, every operation says what it answers, and the server behaves as it
says: public operations need no token, the others answer 401 without one, bodies match their schemas."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fhir_api import create_app, openapi
from tests.helpers import FHIR, empty_tables

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# RFC 6749 errors, not OperationOutcome
OAUTH_ENDPOINTS = {"/auth/token", "/auth/launch", "/auth/introspect", "/auth/revoke"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.build()


def _operations(doc: dict[str, Any]):
    for path, item in sorted(doc["paths"].items()):
        for method, op in sorted(item.items()):
            if method in METHODS:
                yield path, method, op


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        _, _, kind, name = node["$ref"].split("/", 3)
        node = doc["components"][kind][name]
    return node


# -- validity ----------------------------------------------------------------------------------------------
def test_the_document_validates_as_openapi_3_1(doc):
    validator = pytest.importorskip("openapi_spec_validator")
    assert doc["openapi"].startswith("3.1.")
    validator.OpenAPIV31SpecValidator(doc).validate()


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_structure(doc):
    """What the validator checks, for machines without it, plus this API's own rules."""
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] and doc["info"]["version"]
    assert "servers" not in doc, "no host-specific server URL in the committed document"
    for target in _refs(doc):
        assert target.startswith("#/components/"), target
        _, _, kind, name = target.split("/", 3)
        assert name in doc["components"].get(kind, {}), f"dangling {target}"
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    for path, method, op in _operations(doc):
        where = f"{method.upper()} {path}"
        assert path.startswith("/") and op.get("summary") and op.get("tags"), where
        declared = {p["name"] for p in doc["paths"][path].get("parameters", []) if p.get("in") == "path"}
        assert declared == set(re.findall(r"\{([^}]*)\}", path)), where


# -- every operation's answers -------------------------------------------------------------------------------
def test_every_operation_documents_success_and_operation_outcome_errors(doc):
    outcome = {"$ref": "#/components/schemas/OperationOutcome"}
    for path, method, op in _operations(doc):
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        refusal = set(responses) == {"405", "429", "default"}  # AuditEvent writes: refused by design
        assert refusal or any(s.startswith("2") for s in responses), f"{where}: no success response"
        assert responses["default"] == {"$ref": "#/components/responses/Error"}, where
        for status, response in responses.items():
            if status[0] in "45" and not (path in OAUTH_ENDPOINTS and status in ("400", "401")):
                content = _resolve(doc, response)["content"]
                assert content["application/fhir+json"]["schema"] == outcome, f"{where} {status}"
        if op.get("security") != []:
            assert "401" in responses, f"{where}: secured but 401 is not documented"


def test_security_schemes_and_scopes(doc):
    schemes = doc["components"]["securitySchemes"]
    flows = schemes["smart"]["flows"]
    assert flows["clientCredentials"]["tokenUrl"] == "/auth/token"
    assert flows["authorizationCode"]["authorizationUrl"] == "/auth/authorize"
    assert "system/*.rs" in flows["clientCredentials"]["scopes"]
    assert {"patient/*.rs", "user/*.cruds", "launch/patient", "openid"} <= set(
        flows["authorizationCode"]["scopes"]
    )
    assert schemes["bearer"] == {
        **schemes["bearer"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert doc["security"] == [{"smart": []}, {"bearer": []}]
    public = sorted(f"{m.upper()} {p}" for p, m, op in _operations(doc) if op.get("security") == [])
    for expected in (
        "GET /fhir/R4/metadata",
        "GET /fhir/R4/.well-known/smart-configuration",
        "GET /auth/jwks",
        "POST /auth/token",
        "GET /healthz",
        "GET /readyz",
        "GET /docs/errors",
    ):
        assert expected in public


def test_resource_types_and_examples(doc):
    from resources.registry import supported_types

    enum = doc["components"]["schemas"]["ResourceType"]["enum"]
    assert "Patient" in enum and "Observation" in enum and "AuditEvent" not in enum
    assert set(enum) == set(supported_types()) - {"AuditEvent"}
    create = doc["paths"]["/fhir/R4/{res_type}"]["post"]["requestBody"]["content"]["application/fhir+json"]
    assert create["examples"]["patient"] == {"$ref": "#/components/examples/Patient"}
    bundle = doc["paths"]["/fhir/R4/"]["post"]["requestBody"]["content"]["application/fhir+json"]
    assert doc["components"]["examples"]["TransactionBundle"]["value"]["type"] == "transaction"
    assert bundle["examples"]["transaction"] == {"$ref": "#/components/examples/TransactionBundle"}
    token = doc["paths"]["/auth/token"]["post"]["requestBody"]["content"]
    assert list(token) == ["application/x-www-form-urlencoded"]


# -- behaviour ----------------------------------------------------------------------------------------------
@pytest.fixture
def unlimited(database_url):
    """The app without rate limits: this test sends one anonymous request per operation at once."""
    application = create_app({"DATABASE_URL": database_url, "TESTING": True, "RATE_LIMIT_ENABLED": False})
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


def _sample(doc: dict[str, Any], param: dict[str, Any]) -> str:
    schema = _resolve(doc, param["schema"])
    if "enum" in schema:
        return "Patient" if "Patient" in schema["enum"] else schema["enum"][0]
    if schema.get("pattern", "").startswith("^[0-9]"):
        return "1"
    return "example-1"


def test_public_and_secured_operations_behave_as_declared(unlimited, doc):
    anonymous = unlimited.test_client()
    wrong = []
    for path, method, op in _operations(doc):
        url = path
        for param in doc["paths"][path].get("parameters", []):
            url = url.replace("{" + param["name"] + "}", _sample(doc, param))
        status = anonymous.open(url, method=method.upper()).status_code
        public = op.get("security") == []
        if (public and status == 401) or (not public and status != 401):
            wrong.append(f"{method.upper()} {url}: {'public' if public else 'secured'} but answered {status}")
    assert not wrong, "\n".join(wrong)


def _check(doc: dict[str, Any], path: str, method: str, resp) -> None:
    """The response's body validates against the schema documented for its status and media type."""
    jsonschema = pytest.importorskip("jsonschema")
    responses = doc["paths"][path][method]["responses"]
    documented = responses.get(str(resp.status_code))
    assert documented is not None, f"{method.upper()} {path} answered an undocumented {resp.status_code}"
    content = _resolve(doc, documented).get("content", {})
    media = content.get(resp.mimetype)
    assert media is not None, f"{method.upper()} {path} {resp.status_code}: {resp.mimetype} is not documented"
    schema = {**media["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(resp.get_json(force=True))


def _example(doc: dict[str, Any], name: str) -> Any:
    return doc["components"]["examples"][name]["value"]


def test_responses_match_their_schemas_and_examples_are_accepted(app, client, anonymous, doc):
    fhir = {"Content-Type": FHIR}
    _check(doc, "/fhir/R4/metadata", "get", anonymous.get("/fhir/R4/metadata"))
    _check(
        doc,
        "/fhir/R4/.well-known/smart-configuration",
        "get",
        anonymous.get("/fhir/R4/.well-known/smart-configuration"),
    )
    _check(doc, "/auth/jwks", "get", anonymous.get("/auth/jwks"))
    _check(doc, "/healthz", "get", anonymous.get("/healthz"))
    _check(
        doc, "/auth/token", "post", anonymous.post("/auth/token", data={"grant_type": "client_credentials"})
    )
    _check(doc, "/fhir/R4/{res_type}/{res_id}", "get", anonymous.get("/fhir/R4/Patient/nobody"))

    # the transaction's conditional create must find no other patient with its identifier
    for name in ("TransactionBundle", "BatchBundle"):
        resp = client.post("/fhir/R4/", json=_example(doc, name), headers=fhir)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        _check(doc, "/fhir/R4/", "post", resp)
    created = client.post("/fhir/R4/Patient", json=_example(doc, "Patient"), headers=fhir)
    _check(doc, "/fhir/R4/{res_type}", "post", created)
    _check(
        doc,
        "/fhir/R4/{res_type}/{res_id}",
        "put",
        client.put("/fhir/R4/Patient/pat-0001", json=_example(doc, "PatientUpdate"), headers=fhir),
    )
    patched = client.patch(
        "/fhir/R4/Patient/pat-0001",
        json=_example(doc, "JsonPatch"),
        headers={"Content-Type": "application/json-patch+json"},
    )
    _check(doc, "/fhir/R4/{res_type}/{res_id}", "patch", patched)
    _check(doc, "/fhir/R4/{res_type}/{res_id}", "get", client.get("/fhir/R4/Patient/pat-0001"))
    _check(doc, "/fhir/R4/{res_type}/{res_id}", "get", client.get("/fhir/R4/Patient/nobody"))
    _check(doc, "/fhir/R4/{res_type}", "get", client.get("/fhir/R4/Patient?family=Chalmers"))
    validated = client.post(
        "/fhir/R4/Patient/$validate", json=_example(doc, "ValidateParameters"), headers=fhir
    )
    assert validated.get_json()["issue"][0]["severity"] == "information", validated.get_json()
    _check(doc, "/fhir/R4/{res_type}/$validate", "post", validated)
    _check(doc, "/fhir/R4/{res_type}/{res_id}", "delete", client.delete("/fhir/R4/Patient/pat-0001"))
