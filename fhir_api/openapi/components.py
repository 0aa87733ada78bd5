"""Reusable parts of the OpenAPI document: schemas, parameters, error responses, security schemes, examples.

Whatever the code already knows is read from it (the resource types served, the compartments, the id
syntax, the error classes and their docs anchors, the SMART scopes), so the document cannot drift from it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from apispec import APISpec

from fhir_api.errors import DOCS_ERRORS_PATH, FhirError, all_error_classes

FHIR_JSON = "application/fhir+json"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
NDJSON = "application/fhir+ndjson"

SMART = "smart"
BEARER = "bearer"
SECURED: list[dict[str, list[str]]] = [{SMART: []}, {BEARER: []}]
TOKEN_PATH = "/auth/token"
AUTHORIZE_PATH = "/auth/authorize"  # SMART App Launch: announced for the authorization-code flow
ERROR_SYSTEM = "urn:fhir-api:error"

# http://hl7.org/fhir/R4/valueset-issue-type.html
ISSUE_TYPES = (  # noqa: SIM905  (a word table reads better than 31 quoted strings)
    "invalid structure required value invariant security login unknown expired forbidden suppressed "
    "processing not-supported duplicate multiple-matches not-found deleted too-long code-invalid extension "
    "too-costly business-rule conflict transient lock-error no-store exception timeout incomplete throttled "
    "informational"
).split()


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(name: str) -> dict[str, str]:
    return ref("schemas", name)


def fhir_content(schema: str, examples: dict[str, str] | None = None) -> dict[str, Any]:
    """The same schema under both JSON media types the server reads and writes."""
    media: dict[str, Any] = {"schema": schema_ref(schema)}
    if examples:
        media["examples"] = dict(examples)
    return {FHIR_JSON: media, JSON: dict(media)}


# -- schemas ---------------------------------------------------------------------------------------------
def served_types() -> list[str]:
    """Resource types of the generic REST layer: those the R4B models validate, less those another package
    serves (the audit log's AuditEvent)."""
    from resources.capability import TYPE_OVERRIDES
    from resources.registry import supported_types

    return [t for t in supported_types() if t not in TYPE_OVERRIDES]


def _schemas() -> dict[str, dict[str, Any]]:
    from resources.search.compartments import compartments
    from resources.views import FhirIdConverter

    string = {"type": "string"}
    return {
        "ResourceType": {
            "type": "string",
            "description": "A FHIR R4 resource type served by the generic REST interactions (AuditEvent has "
            "endpoints of its own). Other R4 names answer 422, unknown names 404.",
            "enum": served_types(),
        },
        "CompartmentType": {
            "type": "string",
            "description": "A compartment (http://hl7.org/fhir/R4/compartmentdefinition.html).",
            "enum": sorted(compartments()),
        },
        "Id": {
            "type": "string",
            "description": "A FHIR logical id.",
            "pattern": f"^{FhirIdConverter.regex}$",
            "examples": ["pat-0001"],
        },
        "Resource": {
            "type": "object",
            "description": "Any FHIR R4 resource (http://hl7.org/fhir/R4/resourcelist.html), JSON as sent; "
            "the server manages id and meta.versionId/lastUpdated. Validated as R4 (fhir.resources R4B).",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"type": "string", "examples": ["Patient"]},
                "id": schema_ref("Id"),
                "meta": {
                    "type": "object",
                    "properties": {"versionId": string, "lastUpdated": {"type": "string"}},
                },
            },
            "additionalProperties": True,
        },
        "Parameters": {
            "type": "object",
            "description": "A Parameters resource (http://hl7.org/fhir/R4/parameters.html): the input or "
            "output of an operation.",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"const": "Parameters"},
                "parameter": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name"], "additionalProperties": True},
                },
            },
            "additionalProperties": True,
        },
        "Bundle": {
            "type": "object",
            "description": "A Bundle (http://hl7.org/fhir/R4/bundle.html): searchset and history pages, "
            "transaction and batch requests and their responses.",
            "required": ["resourceType", "type"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {
                    "type": "string",
                    "enum": [
                        "document",
                        "message",
                        "transaction",
                        "transaction-response",
                        "batch",
                        "batch-response",
                        "history",
                        "searchset",
                        "collection",
                    ],
                },
                "total": {"type": "integer", "minimum": 0},
                "link": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"relation": string, "url": string},
                    },
                },
                "entry": {"type": "array", "items": schema_ref("BundleEntry")},
            },
            "additionalProperties": True,
        },
        "BundleEntry": {
            "type": "object",
            "properties": {
                "fullUrl": string,
                "resource": schema_ref("Resource"),
                "search": {"type": "object", "properties": {"mode": string}},
                "request": {
                    "type": "object",
                    "required": ["method", "url"],
                    "properties": {
                        "method": {
                            "type": "string",
                            "enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
                        },
                        "url": string,
                        "ifMatch": string,
                        "ifNoneExist": string,
                        "ifNoneMatch": string,
                        "ifModifiedSince": string,
                    },
                },
                "response": {
                    "type": "object",
                    "properties": {
                        "status": string,
                        "location": string,
                        "etag": string,
                        "lastModified": string,
                        "outcome": schema_ref("OperationOutcome"),
                    },
                },
            },
            "additionalProperties": True,
        },
        "OperationOutcome": {
            "type": "object",
            "description": "Every error (and some informational answers) is an OperationOutcome "
            "(http://hl7.org/fhir/R4/operationoutcome.html). An error issue's details link to the section "
            f"of {DOCS_ERRORS_PATH} that explains it; field errors name the element by a FHIRPath "
            "expression.",
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"const": "OperationOutcome"},
                "issue": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["severity", "code"],
                        "properties": {
                            "severity": {
                                "type": "string",
                                "enum": ["fatal", "error", "warning", "information"],
                            },
                            "code": {"type": "string", "enum": ISSUE_TYPES},
                            "details": {
                                "type": "object",
                                "properties": {
                                    "coding": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "system": {"const": ERROR_SYSTEM},
                                                "code": {
                                                    "type": "string",
                                                    "description": f"The anchor in {DOCS_ERRORS_PATH}.",
                                                    "enum": sorted({c.slug for c in all_error_classes()}),
                                                },
                                            },
                                        },
                                    },
                                    "text": string,
                                },
                            },
                            "diagnostics": {
                                "type": "string",
                                "description": "What went wrong, never with request data (no PHI).",
                            },
                            "expression": {"type": "array", "items": string},
                        },
                    },
                },
            },
        },
        "JsonPatch": {
            "type": "array",
            "description": "RFC 6902 JSON Patch.",
            "items": {
                "type": "object",
                "required": ["op", "path"],
                "properties": {
                    "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                    "path": string,
                    "from": string,
                    "value": {},
                },
            },
        },
        "MergePatch": {
            "type": "object",
            "description": "RFC 7396 JSON Merge Patch: members to set; null removes one.",
            "additionalProperties": True,
        },
        "SearchForm": {
            "type": "object",
            "description": "Search parameters as form fields (they count together with the URL's query).",
            "additionalProperties": string,
        },
        "OAuthError": {
            "type": "object",
            "description": "RFC 6749 section 5.2 error (the token endpoint answers OAuth clients in their "
            "own format, never OperationOutcome).",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "string",
                    "enum": [
                        "invalid_request",
                        "invalid_client",
                        "invalid_grant",
                        "unauthorized_client",
                        "unsupported_grant_type",
                        "invalid_scope",
                    ],
                },
                "error_description": string,
            },
        },
        "TokenRequest": {
            "type": "object",
            "description": "SMART Backend Services (client_credentials with a private_key_jwt "
            "assertion), or App Launch (authorization_code with the PKCE code_verifier; refresh_token). "
            "Confidential clients authenticate with client_assertion; public apps send client_id.",
            "required": ["grant_type"],
            "properties": {
                "grant_type": {
                    "type": "string",
                    "enum": ["client_credentials", "authorization_code", "refresh_token"],
                },
                "code": {"type": "string", "description": "authorization_code: the code from the redirect."},
                "redirect_uri": {"type": "string", "description": "authorization_code: as in the request."},
                "code_verifier": {"type": "string", "description": "authorization_code: the PKCE verifier."},
                "refresh_token": {"type": "string", "description": "refresh_token: the refresh token."},
                "scope": {
                    "type": "string",
                    "description": "Space-separated SMART scopes.",
                    "examples": ["system/Patient.rs system/Observation.rs"],
                },
                "client_assertion_type": {
                    "type": "string",
                    "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
                },
                "client_assertion": {
                    "type": "string",
                    "description": "A JWT signed with the client's registered key: iss = sub = client_id, "
                    "aud = this token endpoint's URL, exp at most 5 minutes ahead, a unique jti.",
                },
                "client_id": string,
            },
        },
        "TokenResponse": {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in", "scope"],
            "properties": {
                "access_token": {"type": "string", "description": "A JWT signed by this server's key."},
                "token_type": {"type": "string", "enum": ["bearer"]},
                "expires_in": {"type": "integer", "maximum": 300},
                "scope": {"type": "string", "description": "The granted scopes (never more than asked)."},
                "patient": {"type": "string", "description": "App Launch: the patient in context."},
                "encounter": {"type": "string", "description": "EHR launch: the encounter in context."},
                "need_patient_banner": {"type": "boolean"},
                "id_token": {"type": "string", "description": "With openid fhirUser: an OpenID id token."},
                "refresh_token": {
                    "type": "string",
                    "description": "With offline_access or online_access; rotated on every use.",
                },
            },
        },
        "TokenForm": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": string, "token_type_hint": string},
        },
        "Introspection": {
            "type": "object",
            "description": "RFC 7662 with the SMART fields; active is false for any token the caller may "
            "not see.",
            "required": ["active"],
            "properties": {
                "active": {"type": "boolean"},
                "scope": string,
                "client_id": string,
                "exp": {"type": "integer"},
                "sub": string,
                "iss": string,
                "aud": string,
                "jti": string,
                "token_type": string,
                "role": string,
                "patient": string,
                "fhirUser": string,
            },
        },
        "JsonWebKeySet": {
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["kty"],
                        "properties": {"kty": string, "kid": string, "alg": string, "use": string},
                        "additionalProperties": True,
                    },
                },
            },
        },
        "SmartConfiguration": {
            "type": "object",
            "description": "SMART App Launch 2.x metadata (.well-known/smart-configuration).",
            "required": ["token_endpoint", "grant_types_supported", "capabilities"],
            "properties": {
                "token_endpoint": string,
                "jwks_uri": string,
                "introspection_endpoint": string,
                "revocation_endpoint": string,
                "grant_types_supported": {"type": "array", "items": string},
                "token_endpoint_auth_methods_supported": {"type": "array", "items": string},
                "token_endpoint_auth_signing_alg_values_supported": {"type": "array", "items": string},
                "scopes_supported": {"type": "array", "items": string},
                "code_challenge_methods_supported": {"type": "array", "items": string},
                "capabilities": {"type": "array", "items": string},
            },
            "additionalProperties": True,
        },
        "CapabilityStatement": {
            "allOf": [schema_ref("Resource")],
            "description": "Generated from the routes registered (http://hl7.org/fhir/R4/capabilitystatement.html).",
            "properties": {
                "resourceType": {"const": "CapabilityStatement"},
                "fhirVersion": {"const": "4.0.1"},
            },
        },
        "ExportManifest": {
            "type": "object",
            "description": "Bulk Data Access 2.0 completion manifest.",
            "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
            "properties": {
                "transactionTime": string,
                "request": string,
                "requiresAccessToken": {"type": "boolean"},
                "output": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": string, "url": string, "count": {"type": "integer"}},
                    },
                },
                "error": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Liveness": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "database", "schema"],
            "properties": {"status": {"const": "ready"}, "database": {"const": "ok"}, "schema": string},
        },
        "ChainHead": {
            "type": "object",
            "properties": {"seq": {"type": "integer"}, "hash": string},
        },
        "AuditCheckpoints": {
            "type": "object",
            "description": "Signed checkpoints of the audit hash chain, newest first, and the key that "
            "verifies them.",
            "required": ["head", "alg", "checkpoints"],
            "properties": {
                "head": schema_ref("ChainHead"),
                "key": {"type": ["object", "null"], "description": "The public JWK (Ed25519)."},
                "alg": string,
                "checkpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "seq": {"type": "integer"},
                            "hash": string,
                            "time": string,
                            "jws": string,
                        },
                    },
                },
            },
        },
        "AuditStatus": {
            "type": "object",
            "description": "The chain checked from the newest signed checkpoint to its head.",
            "required": ["ok", "head", "checked", "problems"],
            "properties": {
                "ok": {"type": "boolean"},
                "verified_to": {"type": ["integer", "null"]},
                "head": schema_ref("ChainHead"),
                "checked": {"type": "integer"},
                "checkpoint": {
                    "type": ["object", "null"],
                    "properties": {"seq": {"type": "integer"}, "time": string},
                },
                "problems": {"type": "array", "items": {}},
            },
        },
    }


# -- examples --------------------------------------------------------------------------------------------
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
}

_EXAMPLES: dict[str, dict[str, Any]] = {
    "Patient": {"summary": "A new patient (the server assigns the id)", "value": PATIENT},
    "PatientUpdate": {
        "summary": "A patient's new content (its id matches the URL)",
        "value": {**PATIENT, "id": "pat-0001", "birthDate": "1974-12-26"},
    },
    "JsonPatch": {
        "summary": "JSON Patch (application/json-patch+json)",
        "value": [{"op": "replace", "path": "/birthDate", "value": "1974-12-26"}],
    },
    "MergePatch": {
        "summary": "JSON Merge Patch (application/merge-patch+json)",
        "value": {"birthDate": "1974-12-26", "gender": None},
    },
    "TransactionBundle": {
        "summary": "A transaction: a patient and an observation about them, all or nothing",
        "value": {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                    "resource": PATIENT,
                    "request": {
                        "method": "POST",
                        "url": "Patient",
                        "ifNoneExist": "identifier=urn:oid:1.2.36.146.595.217.0.1|12345",
                    },
                },
                {
                    "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {
                            "coding": [
                                {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
                            ]
                        },
                        "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                        "effectiveDateTime": "2024-05-01T09:30:00Z",
                        "valueQuantity": {
                            "value": 72,
                            "unit": "beats/minute",
                            "system": "http://unitsofmeasure.org",
                            "code": "/min",
                        },
                    },
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        },
    },
    "BatchBundle": {
        "summary": "A batch: independent entries, each with its own outcome",
        "value": {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "request": {
                        "method": "GET",
                        "url": "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|12345",
                    }
                },
                {"request": {"method": "DELETE", "url": "Observation/obs-0001"}},
            ],
        },
    },
    "ValidateParameters": {
        "summary": "$validate with the resource in a Parameters resource",
        "value": {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": PATIENT}]},
    },
    "TokenRequest": {
        "summary": "SMART Backend Services token request",
        "value": {
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs system/Observation.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": "eyJhbGciOiJFUzM4NCIsImtpZCI6IjEiLCJ0eXAiOiJKV1QifQ.eyJpc3MiOiIuLi4ifQ.c2ln",
        },
    },
}


def _outcome_example(cls: type[FhirError]) -> dict[str, Any]:
    """The shape ``fhir_api.errors.operation_outcome`` renders (the link is absolute on a live server)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": cls.code,
                "details": {
                    "coding": [{"system": ERROR_SYSTEM, "code": cls.slug}],
                    "text": f"See {DOCS_ERRORS_PATH}#{cls.slug}",
                },
                "diagnostics": cls.title,
            }
        ],
    }


# -- parameters ------------------------------------------------------------------------------------------
def _parameter(
    where: str,
    name: str,
    description: str,
    schema: dict[str, Any] | None = None,
    examples: list[Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    schema = dict(schema or {"type": "string"})
    if examples:
        schema["examples"] = examples  # JSON Schema examples (a parameter's own "examples" is a map)
    return {"name": name, "in": where, "description": description, "schema": schema, **extra}


def _query(name: str, description: str, schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return _parameter("query", name, description, schema, **extra)


def _header(
    name: str, description: str, schema: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return _parameter("header", name, description, schema, **extra)


_NONNEGATIVE = {"type": "integer", "minimum": 0}

_AUTHORIZE = {
    "response_type": ("Always code.", {"type": "string", "enum": ["code"]}),
    "client_id": ("The app's client_id.", None),
    "redirect_uri": ("One of the app's registered redirect URIs.", None),
    "scope": ("Space-separated scopes, e.g. openid fhirUser launch/patient patient/*.rs.", None),
    "state": ("Opaque value returned with the code.", None),
    "aud": ("This server's FHIR base URL.", None),
    "code_challenge": ("PKCE: BASE64URL(SHA256(code_verifier)).", None),
    "code_challenge_method": ("PKCE method: S256 only.", {"type": "string", "enum": ["S256"]}),
    "launch": ("EHR launch: the launch value the EHR gave the app.", None),
    "nonce": ("OpenID Connect nonce, echoed in the id token.", None),
}

PARAMETERS: dict[str, dict[str, Any]] = {
    **{f"authorize_{name}": _query(name, text, schema) for name, (text, schema) in _AUTHORIZE.items()},
    "_format": _query(
        "_format",
        "Response format, instead of Accept: json, application/fhir+json or application/json (XML is 406).",
        examples=["json"],
    ),
    "_pretty": _query("_pretty", "Indent the JSON.", {"type": "boolean"}),
    "_summary": _query(
        "_summary",
        "Return a summary of each resource.",
        {"type": "string", "enum": ["true", "false", "text", "data", "count"]},
    ),
    "_elements": _query(
        "_elements", "Comma-separated top-level elements to return.", examples=["name,birthDate"]
    ),
    "_count": _query("_count", "Page size (capped by FHIR_MAX_PAGE_SIZE).", _NONNEGATIVE),
    "_sort": _query("_sort", "Comma-separated sort keys; '-' for descending.", examples=["-_lastUpdated"]),
    "_include": _query(
        "_include",
        "SourceType:parameter[:TargetType]; also :iterate.",
        explode=True,
        examples=["Observation:subject"],
    ),
    "_revinclude": _query(
        "_revinclude", "SourceType:parameter[:TargetType].", examples=["Observation:subject"]
    ),
    "_total": _query(
        "_total",
        "Whether to count the matches.",
        {"type": "string", "enum": ["none", "estimate", "accurate"]},
    ),
    "_cursor": _query("_cursor", "Paging cursor from a Bundle's next or previous link (opaque)."),
    "_type": _query(
        "_type", "Comma-separated resource types to restrict to.", examples=["Patient,Observation"]
    ),
    "_since": _query(
        "_since", "Only versions changed since this instant (FHIR instant or date).", examples=["2024-01-01"]
    ),
    "_at": _query(
        "_at", "Only versions current at this date or period (FHIR date with prefix).", examples=["2024-01"]
    ),
    "criteria": {
        "name": "criteria",
        "in": "query",
        "description": "Search parameters of the resource type, with modifiers and prefixes as FHIR R4 "
        "search defines them (http://hl7.org/fhir/R4/search.html). The CapabilityStatement lists those "
        "served per type; unknown ones are ignored unless Prefer: handling=strict.",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "examples": [{"family": "Chalmers", "birthdate": "ge1970-01-01"}],
        },
    },
    "conditional_criteria": {
        "name": "conditional_criteria",
        "in": "query",
        "description": "Search criteria that select the resource(s) this conditional interaction applies to.",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "examples": [{"identifier": "urn:oid:1.2.36.146.595.217.0.1|12345"}],
        },
    },
    "If-Match": _header(
        "If-Match", 'Only if the current version is this one (W/"<versionId>"), else 412.', examples=['W/"3"']
    ),
    "If-None-Match": _header(
        "If-None-Match", "304 when the current version is one of these ETags.", examples=['W/"3"']
    ),
    "If-Modified-Since": _header("If-Modified-Since", "304 when not changed since this HTTP date."),
    "If-None-Exist": _header(
        "If-None-Exist",
        "Conditional create: search criteria; when one resource matches, it is returned (200) and "
        "nothing is created.",
        examples=["identifier=urn:oid:1.2.36.146.595.217.0.1|12345"],
    ),
    "Prefer-return": _header(
        "Prefer",
        "return=minimal (no body), return=representation (the default) or return=OperationOutcome.",
        examples=["return=minimal"],
    ),
    "Prefer-handling": _header(
        "Prefer",
        "handling=strict: unknown or unsupported search parameters are an error (400).",
        examples=["handling=strict"],
    ),
    "Prefer-async": _header(
        "Prefer",
        "Must be respond-async: exports run in the background.",
        {"type": "string", "enum": ["respond-async"]},
        required=True,
    ),
    "_outputFormat": _query(
        "_outputFormat",
        "Only NDJSON is produced.",
        {"type": "string", "enum": ["application/fhir+ndjson", "application/ndjson", "ndjson"]},
    ),
    "export_type": _query(
        "_type", "Comma-separated resource types to export (default: all the token may read)."
    ),
    "_typeFilter": _query(
        "_typeFilter",
        "Type?search criteria narrowing one type (one per type).",
        examples=["Observation?status=final"],
    ),
    "audit_format": _query(
        "format",
        "Export format.",
        {"type": "string", "enum": ["ndjson", "csv", "bundle"], "default": "ndjson"},
    ),
    "audit_start": _query(
        "start", "Events recorded from this FHIR date (inclusive).", examples=["2024-01-01"]
    ),
    "audit_end": _query("end", "Events recorded before this FHIR date (exclusive).", examples=["2024-02-01"]),
    "audit_patient": _query(
        "patient", "Events about this patient (Patient/<id> or <id>).", examples=["Patient/pat-0001"]
    ),
    "audit_client": _query("client", "Events of this client (client_id)."),
    "eventsSinceNumber": _query(
        "eventsSinceNumber", "The log from this event number on.", {"type": "integer", "minimum": 1}
    ),
    "eventsUntilNumber": _query(
        "eventsUntilNumber", "The log up to this event number.", {"type": "integer", "minimum": 1}
    ),
    "events_count": _query(
        "_count", "Events per page (at most 1000).", {"type": "integer", "minimum": 1, "default": 100}
    ),
    "replay_eventNumber": _query(
        "eventNumber",
        "Send this event again (or give it in a Parameters body).",
        {"type": "integer", "minimum": 1},
    ),
    "replay_since": _query(
        "since", "Send every event queued since this instant again.", examples=["2024-01-01T00:00:00Z"]
    ),
    "checkpoint_count": _query(
        "_count", "How many checkpoints (at most 1000).", {"type": "integer", "minimum": 1, "default": 100}
    ),
}

# Path parameters by name (the URL rules' names); a name missing here gets its converter's schema.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "res_type": {"description": "Resource type.", "schema": "ResourceType"},
    "res_id": {"description": "Logical id of the resource.", "schema": "Id"},
    "version_id": {
        "description": "versionId of the resource (a positive integer).",
        "schema": {"type": "string", "pattern": "^[0-9]{1,64}$", "examples": ["1"]},
    },
    "comp_type": {"description": "Compartment type.", "schema": "CompartmentType"},
    "comp_id": {"description": "Id of the compartment's focal resource.", "schema": "Id"},
    "group_id": {"description": "Logical id of the Group.", "schema": "Id"},
    "event_id": {"description": "Id of the AuditEvent.", "schema": "Id"},
    "job_id": {
        "description": "The export's id, from the kick-off's Content-Location.",
        "schema": {"type": "string"},
    },
    "name": {"description": "File name.", "schema": {"type": "string"}},
}


def path_parameter(name: str, auto: dict[str, Any]) -> dict[str, Any]:
    """A URL rule's parameter with its documented schema (``auto``: what its converter says)."""
    known = PATH_PARAMETERS.get(name)
    if known is None:
        return auto
    schema = known["schema"]
    return {
        "in": "path",
        "name": name,
        "required": True,
        "description": known["description"],
        "schema": schema_ref(schema) if isinstance(schema, str) else schema,
    }


# -- response headers ------------------------------------------------------------------------------------
HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {"description": 'The version: W/"<versionId>".', "schema": {"type": "string"}},
    "Last-Modified": {
        "description": "When this version was written (HTTP date).",
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "The new version's URL: [base]/<type>/<id>/_history/<versionId>.",
        "schema": {"type": "string"},
    },
    "Content-Location": {"description": "Where to poll the export's status.", "schema": {"type": "string"}},
    "X-Progress": {"description": "queued, or running with a percentage.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "WWW-Authenticate": {
        "description": 'Bearer realm="fhir", with error="invalid_token" when a token was refused.',
        "schema": {"type": "string"},
    },
    "X-Request-Id": {
        "description": "The request id (the client's X-Request-Id, or generated).",
        "schema": {"type": "string"},
    },
}
_ERROR_HEADERS = {401: ("WWW-Authenticate",), 429: ("Retry-After",), 503: ("Retry-After",)}


# -- error responses -------------------------------------------------------------------------------------
def error_response_name(status: int | str) -> str:
    return f"Error{status}" if status != "default" else "Error"


def _error_description(classes: list[type[FhirError]], lead: str) -> str:
    lines = [lead, ""]
    for cls in classes:
        lines.append(
            f"- {cls.status} **{cls.title}** (issue code `{cls.code}`, [{DOCS_ERRORS_PATH}#{cls.slug}]"
            f"({DOCS_ERRORS_PATH}#{cls.slug})): {cls.explanation}"
        )
    return "\n".join(lines)


def _error_responses() -> dict[str, dict[str, Any]]:
    """One response per error status, from the error classes; ``Error`` (the default) lists them all."""
    by_status: dict[int, list[type[FhirError]]] = defaultdict(list)
    for cls in all_error_classes():
        by_status[cls.status].append(cls)
    out: dict[str, dict[str, Any]] = {}
    for status, classes in sorted(by_status.items()):
        examples = {cls.slug: {"summary": cls.title, "value": _outcome_example(cls)} for cls in classes}
        response: dict[str, Any] = {
            "description": _error_description(classes, "An OperationOutcome. Causes:"),
            "content": {FHIR_JSON: {"schema": schema_ref("OperationOutcome"), "examples": examples}},
        }
        headers = _ERROR_HEADERS.get(status)
        if headers:
            response["headers"] = {h: ref("headers", h) for h in headers}
        out[error_response_name(status)] = response
    out["Error"] = {
        "description": _error_description(
            all_error_classes(), "Any other failure, as an OperationOutcome. Every error this server reports:"
        ),
        "content": {FHIR_JSON: {"schema": schema_ref("OperationOutcome")}},
    }
    return out


# -- security --------------------------------------------------------------------------------------------
_ACTION_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_OTHER_SCOPES = {
    "openid": "OpenID Connect: an id_token naming the user.",
    "fhirUser": "The user's own FHIR resource (Practitioner, Patient...) in the id_token.",
    "profile": "The user's profile (SMART 1.x name of fhirUser).",
    "launch": "EHR launch: the launch context the EHR passed.",
    "launch/patient": "Standalone launch: ask for a patient in context.",
    "launch/encounter": "Standalone launch: ask for an encounter in context.",
    "offline_access": "A refresh token that outlives the session.",
    "online_access": "A refresh token while the user is online.",
}
_CONTEXT_WORDS = {
    "system": "every resource the client may reach (backend services)",
    "user": "what the signed-in user may reach",
    "patient": "the resources of the patient in context",
}


def action_words(letters: str) -> str:
    words = [_ACTION_WORDS[a] for a in letters]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def _scopes(contexts: tuple[str, ...], other: bool) -> dict[str, str]:
    """SMART scopes as ``fhir_api.auth.scopes`` parses them: v2 letters, the v1 suffixes, then the others."""
    from fhir_api.auth.scopes import ACTIONS, ROLE_CEILINGS

    out: dict[str, str] = {}
    for context in contexts:
        scope = _CONTEXT_WORDS[context]
        out[f"{context}/*.{ACTIONS}"] = (
            f"{action_words(ACTIONS).capitalize()} {scope}, any type. A resource type may replace '*', any "
            f"letters of '{ACTIONS}' in that order may follow the dot (e.g. {context}/Observation.rs), and "
            "a ?param=value constraint may follow them."
        )
        out[f"{context}/*.rs"] = f"Read and search {scope}, any type."
        out[f"{context}/*.read"] = f"SMART 1.x: read and search {scope} (= .rs)."
        out[f"{context}/*.write"] = f"SMART 1.x: create, update and delete {scope} (= .cud)."
        out[f"{context}/*.*"] = f"SMART 1.x: everything on {scope} (= .cruds)."
    if other:
        names = sorted(set().union(*(c.other for c in ROLE_CEILINGS.values())))
        for name in names:
            out[name] = _OTHER_SCOPES.get(name, "SMART scope.")
    return out


def _security_schemes() -> dict[str, dict[str, Any]]:
    return {
        SMART: {
            "type": "oauth2",
            "description": "SMART on FHIR. Backend services use client_credentials with a private_key_jwt "
            "client assertion (SMART Backend Services); apps will use the authorization code flow with "
            "PKCE (SMART App Launch). A token grants the intersection of the scopes asked for, those the "
            "client was registered with and those its role allows. Discovery: "
            "/fhir/R4/.well-known/smart-configuration.",
            "flows": {
                "clientCredentials": {"tokenUrl": TOKEN_PATH, "scopes": _scopes(("system",), other=False)},
                "authorizationCode": {
                    "authorizationUrl": AUTHORIZE_PATH,
                    "tokenUrl": TOKEN_PATH,
                    "scopes": _scopes(("user", "patient"), other=True),
                },
            },
        },
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from /auth/token (a JWT signed by the key published at "
            "/auth/jwks, valid at most 5 minutes), as `Authorization: Bearer <token>`.",
        },
    }


def register(spec: APISpec) -> None:
    """Add every component to the spec (those no operation refers to are pruned once paths are known)."""
    for name, schema in _schemas().items():
        spec.components.schema(name, schema)
    for name, example in _EXAMPLES.items():
        spec.components.example(name, example)
    for name, parameter in PARAMETERS.items():
        spec.components.parameter(name, parameter["in"], {k: v for k, v in parameter.items() if k != "in"})
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for name, response in _error_responses().items():
        spec.components.response(name, response)
    for name, scheme in _security_schemes().items():
        spec.components.security_scheme(name, scheme)
