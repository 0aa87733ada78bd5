"""What a view cannot say about itself: its inputs, its answers and who may call it, one entry per view.

Keys are ``<blueprint>.<view function>``; summaries and descriptions come from the views' docstrings, path
parameters from their URL rules. A route whose view has no entry here is left out of the document, and
tests/contract/test_url_map.py names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_api.openapi.components import FHIR_JSON, FORM, JSON, NDJSON, fhir_content, schema_ref

# Statuses answered with an OperationOutcome whatever the interaction (401 is added to every secured
# operation, 429 to every rate-limited one, and "default" covers 5xx).
NEGOTIATED = (406,)  # FHIR responses: Accept / _format other than FHIR JSON
WITH_BODY = (413, 415)

AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)


@dataclass(frozen=True)
class Doc:
    """One view's contract; ``responses`` maps success statuses to responses, ``errors`` lists statuses
    answered with an OperationOutcome; ``body`` is a request body object."""

    responses: dict[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    parameters: tuple[str, ...] = ()
    body: dict[str, Any] | None = None
    public: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _headers(*names: str) -> dict[str, str]:
    return {name: name for name in names}


def _ok(description: str, content: dict[str, Any] | None = None, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = _headers(*headers)
    if content is not None:
        response["content"] = content
    return response


def _body(description: str, content: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "content": content}


def _schema(name: str) -> dict[str, Any]:
    return {"schema": schema_ref(name)}


VERSION = ("ETag", "Last-Modified")
RESOURCE = _ok("The resource, as stored.", fhir_content("Resource"), *VERSION)
NOT_MODIFIED = _ok("The client's copy is current (If-None-Match / If-Modified-Since).", None, *VERSION)
WRITTEN = (
    "The resource as stored; with Prefer: return=minimal no body, with return=OperationOutcome an outcome."
)
CREATED = _ok("Created. " + WRITTEN, fhir_content("Resource"), "Location", *VERSION)
UPDATED = _ok("Updated. " + WRITTEN, fhir_content("Resource"), "Location", *VERSION)
OUTCOME = _ok("Done, as an informational OperationOutcome.", fhir_content("OperationOutcome"))
SEARCHSET = _ok(
    "A searchset Bundle page; its next link holds the cursor of the following page.", fhir_content("Bundle")
)
HISTORY = _ok("A history Bundle page, newest first.", fhir_content("Bundle"))
HTML = {"text/html": {"schema": {"type": "string"}}}
DOCS_NOT_MODIFIED = _ok("The client's copy is current (If-None-Match with the ETag of the last answer).")

RESOURCE_BODY = _body(
    "A FHIR resource of the type in the URL.",
    fhir_content("Resource", {"patient": "Patient"}),
)
UPDATE_BODY = _body(
    "The resource's new content; its id must match the URL's.",
    fhir_content("Resource", {"patient": "PatientUpdate"}),
)
PATCH_BODY = _body(
    "JSON Patch, or JSON Merge Patch (application/merge-patch+json, or a JSON object as application/json).",
    {
        "application/json-patch+json": {**_schema("JsonPatch"), "examples": {"patch": "JsonPatch"}},
        "application/merge-patch+json": {**_schema("MergePatch"), "examples": {"merge": "MergePatch"}},
        JSON: {
            "schema": {"oneOf": [schema_ref("JsonPatch"), schema_ref("MergePatch")]},
            "examples": {"patch": "JsonPatch", "merge": "MergePatch"},
        },
    },
)
BUNDLE_BODY = _body(
    "A transaction (all entries or none) or batch (each entry on its own) Bundle.",
    fhir_content("Bundle", {"transaction": "TransactionBundle", "batch": "BatchBundle"}),
)
VALIDATE_BODY = _body(
    "The resource to check, or a Parameters resource with it in a 'resource' parameter.",
    fhir_content("Resource", {"patient": "Patient", "parameters": "ValidateParameters"}),
)
SEARCH_FORM = _body("Search parameters as form fields.", {FORM: _schema("SearchForm")})
TOKEN_FORM = _body("The token to look at.", {FORM: _schema("TokenForm")})

RENDERING = ("_format", "_pretty")
READ_PARAMS = ("_summary", "_elements", *RENDERING, "If-None-Match", "If-Modified-Since")
SEARCH_PARAMS = (
    "criteria",
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_total",
    "_summary",
    "_elements",
    "_cursor",
    *RENDERING,
    "Prefer-handling",
)
HISTORY_PARAMS = ("_count", "_since", "_at", "_cursor", *RENDERING)
EVERYTHING_PARAMS = ("_type", "_since", "_count", "_cursor", *RENDERING)
EXPORT_PARAMS = ("Prefer-async", "_outputFormat", "export_type", "_since", "_typeFilter")
WRITE_PARAMS = ("Prefer-return", *RENDERING)

_SEARCH = Doc({200: SEARCHSET}, (400, 403, 404, *NEGOTIATED, 422), SEARCH_PARAMS)
_SEARCH_POST = Doc({200: SEARCHSET}, (400, 403, 404, *NEGOTIATED, 415, 422), SEARCH_PARAMS, SEARCH_FORM)
_HISTORY = Doc({200: HISTORY}, (400, 403, 404, *NEGOTIATED, 422), HISTORY_PARAMS)
_EVERYTHING = Doc(
    {200: _ok("A searchset Bundle page of the patients' records.", fhir_content("Bundle"))},
    (400, 403, 404, *NEGOTIATED),
    EVERYTHING_PARAMS,
)
_VALIDATE = Doc(
    {
        200: _ok(
            "An OperationOutcome listing every problem, or saying the resource is valid.",
            fhir_content("OperationOutcome"),
        )
    },
    (400, 403, 404, *NEGOTIATED, *WITH_BODY, 422),
    RENDERING,
    VALIDATE_BODY,
)
_EXPORT = Doc(
    {
        202: _ok(
            "Accepted: poll the status URL in Content-Location.",
            fhir_content("OperationOutcome"),
            "Content-Location",
        )
    },
    (400, 403, 404),
    EXPORT_PARAMS,
)
_AUDIT_SEARCH = Doc(
    {200: _ok("A searchset Bundle of AuditEvents, newest first.", fhir_content("Bundle"))},
    (400, 403, *NEGOTIATED),
    ("criteria", "_count", "_cursor", *RENDERING),
)

OPERATIONS: dict[str, Doc] = {
    # -- FHIR RESTful interactions (resources/views.py) --
    "fhir.capabilities": Doc(
        {200: _ok("The CapabilityStatement.", fhir_content("CapabilityStatement"))},
        (400, *NEGOTIATED),
        RENDERING,
        public=True,
    ),
    "fhir.smart_configuration": Doc(
        {200: _ok("SMART configuration.", {JSON: _schema("SmartConfiguration")})}, public=True
    ),
    "fhir.create": Doc(
        {
            201: CREATED,
            200: _ok(
                "Conditional create: one resource already matches; it is returned.",
                fhir_content("Resource"),
                "Location",
                *VERSION,
            ),
        },
        (400, 403, 404, *NEGOTIATED, 412, *WITH_BODY, 422),
        ("If-None-Exist", "conditional_criteria", *WRITE_PARAMS),
        RESOURCE_BODY,
    ),
    "fhir.conditional_update": Doc(
        {200: UPDATED, 201: CREATED},
        (400, 403, 404, *NEGOTIATED, 409, 412, *WITH_BODY, 422),
        ("conditional_criteria", "If-Match", *WRITE_PARAMS),
        RESOURCE_BODY,
    ),
    "fhir.conditional_delete": Doc(
        {200: OUTCOME}, (400, 403, 404, *NEGOTIATED, 412), ("conditional_criteria", *RENDERING)
    ),
    "fhir.read": Doc({200: RESOURCE, 304: NOT_MODIFIED}, (400, 403, 404, *NEGOTIATED, 410, 422), READ_PARAMS),
    "fhir.vread": Doc(
        {200: RESOURCE, 304: NOT_MODIFIED}, (400, 403, 404, *NEGOTIATED, 410, 422), READ_PARAMS
    ),
    "fhir.update": Doc(
        {200: UPDATED, 201: CREATED},
        (400, 403, 404, *NEGOTIATED, 409, 412, *WITH_BODY, 422),
        ("If-Match", *WRITE_PARAMS),
        UPDATE_BODY,
    ),
    "fhir.patch": Doc(
        {200: UPDATED},
        (400, 403, 404, *NEGOTIATED, 409, 410, 412, *WITH_BODY, 422),
        ("If-Match", *WRITE_PARAMS),
        PATCH_BODY,
    ),
    "fhir.delete": Doc({200: OUTCOME}, (400, 403, 404, *NEGOTIATED, 409, 422), RENDERING),
    "fhir.history_system": _HISTORY,
    "fhir.history_type": _HISTORY,
    "fhir.history_instance": _HISTORY,
    "fhir.search_type": _SEARCH,
    "fhir.search_type_post": _SEARCH_POST,
    "fhir.search_compartment": _SEARCH,
    "fhir.search_system": Doc({200: SEARCHSET}, _SEARCH.errors, ("_type", *SEARCH_PARAMS)),
    "fhir.search_system_post": Doc(
        {200: SEARCHSET}, _SEARCH_POST.errors, ("_type", *SEARCH_PARAMS), SEARCH_FORM
    ),
    "fhir.patient_everything": _EVERYTHING,
    "fhir.patients_everything": _EVERYTHING,
    "fhir.validate_type": _VALIDATE,
    "fhir.validate_instance": _VALIDATE,
    "fhir.bundle": Doc(
        {
            200: _ok(
                "The transaction-response or batch-response Bundle, entries in the request's order.",
                fhir_content("Bundle"),
            )
        },
        (400, 403, 404, *NEGOTIATED, 409, 412, *WITH_BODY, 422),
        WRITE_PARAMS,
        BUNDLE_BODY,
    ),
    # -- SMART authorization server (fhir_api/auth/server.py) --
    "auth.token": Doc(
        {
            200: _ok("An access token.", {JSON: _schema("TokenResponse")}),
            400: _ok(
                "An OAuth error (RFC 6749 section 5.2): invalid_request, invalid_client (the client could "
                "not be authenticated), invalid_grant, invalid_scope, unauthorized_client, "
                "unsupported_grant_type.",
                {JSON: _schema("OAuthError")},
            ),
        },
        body=_body(
            "The token request, form-encoded (RFC 6749 section 4.4, SMART Backend Services).",
            {FORM: {**_schema("TokenRequest"), "examples": {"backend": "TokenRequest"}}},
        ),
        public=True,
    ),
    "auth.authorize": Doc(
        {
            200: _ok(
                "The sign-in, consent or patient-picker page.", {"text/html": {"schema": {"type": "string"}}}
            ),
            302: _ok("Back to the app: redirect_uri?code=...&state=... (or error=...).", None, "Location"),
        },
        (400, 401),
        tuple(f"authorize_{name}" for name in AUTHORIZE_PARAMS),
        _body(
            "The page's form: step=login (username, password) or step=consent (ticket, decision, patient).",
            {FORM: {"schema": {"type": "object"}}},
            required=False,
        ),
        public=True,
    ),
    "auth.launch": Doc(
        {
            200: _ok("The launch value to hand to the app.", {JSON: {"schema": {"type": "object"}}}),
            400: _ok(
                "An OAuth error: invalid_request (no patient) or invalid_client (the caller is not an EHR).",
                {JSON: _schema("OAuthError")},
            ),
        },
        (401,),
        body=_body(
            "The context: patient (required) and encounter.",
            {JSON: {"schema": {"type": "object", "properties": {"patient": {}, "encounter": {}}}}},
        ),
    ),
    "metrics.metrics": Doc(
        {200: _ok("Prometheus text format.", {"text/plain": {"schema": {"type": "string"}}})},
        (403, 404),
        public=True,
    ),
    "auth.jwks": Doc({200: _ok("The JWK Set.", {JSON: _schema("JsonWebKeySet")})}, public=True),
    "auth.introspect": Doc(
        {
            200: _ok("The token's state (RFC 7662).", {JSON: _schema("Introspection")}),
            400: _ok("invalid_request: no token in the form.", {JSON: _schema("OAuthError")}),
        },
        body=TOKEN_FORM,
    ),
    "auth.revoke": Doc(
        {
            200: _ok("Revoked, or nothing to do (RFC 7009 section 2.2): the same answer."),
            400: _ok("invalid_request: no token in the form.", {JSON: _schema("OAuthError")}),
        },
        body=TOKEN_FORM,
    ),
    # -- operations (fhir_api/health.py, fhir_api/docs.py) --
    "health.healthz": Doc({200: _ok("Alive.", {JSON: _schema("Liveness")})}, public=True),
    "health.readyz": Doc({200: _ok("Ready.", {JSON: _schema("Readiness")})}, (503,), public=True),
    "docs.errors_page": Doc(
        {200: _ok("The error catalogue.", {"text/html": {"schema": {"type": "string"}}})}, public=True
    ),
    "docs.deprecations_page": Doc(
        {200: _ok("The deprecation notices and the versioning policy.", HTML)}, public=True
    ),
    "docs.ui": Doc(
        {
            200: _ok("The page (its scripts and styles are under /docs/assets).", HTML),
            304: DOCS_NOT_MODIFIED,
        },
        public=True,
    ),
    "docs.ui_asset": Doc(
        {
            200: _ok(
                "The file.",
                {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                    "text/html": {"schema": {"type": "string"}},
                    "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            ),
            304: DOCS_NOT_MODIFIED,
        },
        (404,),
        public=True,
    ),
    # -- the audit log (audit/views.py) --
    "audit.search": _AUDIT_SEARCH,
    "audit.search_post": Doc(
        _AUDIT_SEARCH.responses, (*_AUDIT_SEARCH.errors, 415), _AUDIT_SEARCH.parameters, SEARCH_FORM
    ),
    "audit.read": Doc(
        {200: _ok("The AuditEvent, exactly as recorded.", fhir_content("Resource"), "ETag")},
        (400, 403, 404, *NEGOTIATED),
        RENDERING,
    ),
    "audit.refuse": Doc(
        {},
        (405,),
        public=True,
        extra={
            "description": "Every write to /fhir/R4/AuditEvent, and every other path under it, answers 405: "
            "AuditEvents are never created, changed or deleted through the API."
        },
    ),
    "audit.checkpoints": Doc(
        {200: _ok("The chain head and its signed checkpoints.", {JSON: _schema("AuditCheckpoints")})},
        (400, 403),
        ("checkpoint_count",),
    ),
    "audit.status": Doc({200: _ok("The chain's state.", {JSON: _schema("AuditStatus")})}, (403,)),
    "audit.ui": Doc(
        {
            200: _ok(
                "The page or one of its files.",
                {
                    "text/html": {"schema": {"type": "string"}},
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                },
            )
        },
        (404,),
        public=True,
    ),
    "audit.export_log": Doc(
        {
            200: _ok(
                "The log, streamed; a signed manifest comes last.",
                {
                    NDJSON: {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}},
                    FHIR_JSON: _schema("Bundle"),
                },
            )
        },
        (400, 403),
        ("audit_format", "audit_start", "audit_end", "audit_patient", "audit_client"),
    ),
    # -- Bulk Data Access (resources/bulk/views.py) --
    "bulk.export_system": _EXPORT,
    "bulk.export_patients": _EXPORT,
    "bulk.export_group": _EXPORT,
    "bulk.status": Doc(
        {
            200: _ok("Complete: the manifest of output files.", {JSON: _schema("ExportManifest")}),
            202: _ok("Still running.", None, "X-Progress", "Retry-After"),
        },
        (404,),
    ),
    "bulk.cancel": Doc({202: _ok("Cancelled (or its files deleted); its status now answers 404.")}, (404,)),
    # -- Subscription operations (resources/subscriptions/views.py) --
    "subscriptions.events": Doc(
        {
            200: _ok(
                "The delivery log: a Parameters resource with the subscription's status and one "
                "notification-event part per event (attempts, status codes, latency, next retry).",
                fhir_content("Parameters"),
            )
        },
        (400, 403, 404, *NEGOTIATED),
        ("eventsSinceNumber", "eventsUntilNumber", "events_count", *RENDERING),
    ),
    "subscriptions.replay": Doc(
        {
            202: _ok(
                "Queued again: a Parameters resource with the count replayed.", fhir_content("Parameters")
            )
        },
        (400, 403, 404, *NEGOTIATED, 409, *WITH_BODY),
        ("replay_eventNumber", "replay_since", *RENDERING),
        _body(
            "Optional: a Parameters resource with eventNumber or since (else the query names one).",
            fhir_content("Parameters"),
            required=False,
        ),
    ),
    "subscriptions.rotate_secret": Doc(
        {
            200: _ok(
                "The new signing secret, shown this once, and until when the old one still signs.",
                fhir_content("Parameters"),
            )
        },
        (403, 404, *NEGOTIATED, 409),
        RENDERING,
    ),
    "bulk.download": Doc({200: _ok("One output file.", {NDJSON: {"schema": {"type": "string"}}})}, (404,)),
}
