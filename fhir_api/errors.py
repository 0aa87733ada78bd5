"""One error hierarchy: each class carries its HTTP status, OperationOutcome issue code and docs anchor.

A single handler (``register_error_handlers``) renders these, Werkzeug's HTTP errors and unexpected
exceptions as OperationOutcome, so no other error shape can leave the server.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flask import Flask, g, request
from werkzeug import exceptions as wz

log = logging.getLogger(__name__)

DOCS_ERRORS_PATH = "/docs/errors"


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue; ``expression`` is a FHIRPath such as ``Patient.birthDate``."""

    diagnostics: str
    code: str | None = None
    severity: str = "error"
    expression: tuple[str, ...] = field(default_factory=tuple)


class FhirError(Exception):
    """Base of every error the API reports; subclasses set status, code and the docs slug."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"
    explanation: ClassVar[str] = (
        "The server failed unexpectedly. The request id identifies the failure in logs."
    )

    def __init__(
        self,
        diagnostics: str | None = None,
        *,
        issues: Iterable[Issue] | None = None,
        expression: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.issues = list(issues or [])
        if diagnostics is not None or not self.issues:
            exprs = (expression,) if expression else ()
            self.issues.insert(0, Issue(diagnostics or self.title, expression=exprs))
        self.headers = headers or {}
        super().__init__(self.issues[0].diagnostics)


class BadRequest(FhirError):
    status, code, slug, title = 400, "invalid", "bad-request", "Bad request"
    explanation = "The request could not be understood: a parameter, header or URL part is wrong."


class MalformedJson(BadRequest):
    code, slug, title = "structure", "malformed-json", "Malformed JSON"
    explanation = "The body is not well-formed JSON (or has duplicate keys), so it cannot be a FHIR resource."


class InvalidResource(BadRequest):
    code, slug, title = "structure", "invalid-resource", "Invalid resource"
    explanation = (
        "The resource failed FHIR R4 validation. Each issue names the element by a FHIRPath expression."
    )


class Unauthorized(FhirError):
    status, code, slug, title = 401, "login", "unauthorized", "Authentication required"
    explanation = "No valid bearer token was presented."


class Forbidden(FhirError):
    status, code, slug, title = 403, "forbidden", "forbidden", "Forbidden"
    explanation = "The token is valid but its scopes or role do not allow this interaction."


class NotFound(FhirError):
    status, code, slug, title = 404, "not-found", "not-found", "Not found"
    explanation = "No resource (or route) exists at this address."


class UnknownResourceType(NotFound):
    code, slug, title = "not-supported", "unknown-resource-type", "Unknown resource type"
    explanation = "The URL names a resource type that is not a FHIR R4 resource type served here."


class MethodNotAllowed(FhirError):
    status, code, slug, title = 405, "not-supported", "method-not-allowed", "Method not allowed"
    explanation = "This URL does not support the HTTP method used. The Allow header lists those it does."


class NotAcceptable(FhirError):
    status, code, slug, title = 406, "not-supported", "not-acceptable", "Not acceptable"
    explanation = "The server answers only FHIR R4 (4.0) JSON: application/fhir+json or application/json."


class Conflict(FhirError):
    status, code, slug, title = 409, "conflict", "conflict", "Conflict"
    explanation = "The change conflicts with the current state of the resource (e.g. a concurrent write)."


class Gone(FhirError):
    status, code, slug, title = 410, "deleted", "gone", "Resource deleted"
    explanation = "The resource existed but has been deleted. Its history remains readable."


class PreconditionFailed(FhirError):
    status, code, slug, title = 412, "conflict", "precondition-failed", "Precondition failed"
    explanation = "If-Match named a version that is not the current one: someone else changed the resource."


class PayloadTooLarge(FhirError):
    status, code, slug, title = 413, "too-costly", "payload-too-large", "Payload too large"
    explanation = "The request body exceeds the configured maximum size."


class UriTooLong(FhirError):
    status, code, slug, title = 414, "too-long", "uri-too-long", "URI too long"
    explanation = "The URL exceeds the configured maximum length; send long searches as POST [type]/_search."


class HeadersTooLarge(FhirError):
    status, code, slug, title = 431, "too-long", "headers-too-large", "Request headers too large"
    explanation = "The request's header fields together exceed the configured maximum size."


class UnsupportedMediaType(FhirError):
    status, code, slug, title = 415, "not-supported", "unsupported-media-type", "Unsupported media type"
    explanation = (
        "Send application/fhir+json or application/json (FHIR 4.0); "
        "JSON Patch as application/json-patch+json."
    )


class KeyUnavailable(FhirError):
    """A key that protected data needs is missing from the keyring, or the KMS did not answer."""

    status, code, slug, title = 503, "transient", "key-unavailable", "Encryption key unavailable"
    explanation = (
        "The server cannot use the key-encryption key this data was sealed with (missing from the key "
        "file, or the KMS refused or did not answer). Nothing was returned in place of the protected data."
    )


class TamperedData(FhirError):
    """A ciphertext at rest failed authentication: altered, moved to another place, or another key."""

    status, code, slug, title = 500, "exception", "tampered-data", "Stored data failed its integrity check"
    explanation = (
        "A protected value at rest did not authenticate under its key and its place (resource type, id, "
        "version and element): it was altered, copied from elsewhere, or sealed under another key."
    )


class Unprocessable(FhirError):
    status, code, slug, title = 422, "processing", "unprocessable", "Unprocessable resource"
    explanation = "The resource is well formed but this server cannot accept it (a business rule)."


class UnsupportedResourceType(Unprocessable):
    code, slug, title = "not-supported", "unsupported-resource-type", "Resource type not supported"
    explanation = (
        "This is an R4 resource type that the validation models (fhir.resources R4B) lack, "
        "so the server cannot check and store it."
    )


class TooManyRequests(FhirError):
    status, code, slug, title = 429, "throttled", "too-many-requests", "Too many requests"
    explanation = "The client exceeded its rate limit; retry after the time in Retry-After."


class ServiceUnavailable(FhirError):
    status, code, slug, title = 503, "transient", "service-unavailable", "Service unavailable"
    explanation = "A dependency (database, audit log) is unavailable; retrying later may succeed."


class AuditUnavailable(ServiceUnavailable):
    """The audit record of a request could not be written, so the request did not happen (fail closed)."""

    slug, title = "audit-unavailable", "Audit log unavailable"
    explanation = (
        "Every read and write is recorded in the audit log before its answer leaves the server. The record "
        "could not be written, so no data was returned and nothing was changed; retry later."
    )


_WERKZEUG_MAP: dict[int, type[FhirError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    406: NotAcceptable,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def all_error_classes() -> list[type[FhirError]]:
    """Every error class, for the generated docs page (so the docs cannot miss one)."""
    seen: list[type[FhirError]] = []
    stack: list[type[FhirError]] = [FhirError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: (c.status, c.slug))


def docs_url(slug: str) -> str:
    from fhir_api.http import base_url  # late import: http imports errors

    return f"{base_url(root=True)}{DOCS_ERRORS_PATH}#{slug}"


def operation_outcome(issues: Iterable[Issue], default_code: str, slug: str | None = None) -> dict[str, Any]:
    """Build an OperationOutcome dict; diagnostics never include request data (no PHI)."""
    out: list[dict[str, Any]] = []
    link = docs_url(slug) if slug else None
    for issue in issues:
        item: dict[str, Any] = {"severity": issue.severity, "code": issue.code or default_code}
        if link:
            item["details"] = {
                "coding": [{"system": "urn:fhir-api:error", "code": slug}],
                "text": f"See {link}",
            }
        item["diagnostics"] = issue.diagnostics
        if issue.expression:
            item["expression"] = list(issue.expression)
        out.append(item)
    return {"resourceType": "OperationOutcome", "issue": out}


def from_werkzeug(exc: wz.HTTPException) -> FhirError:
    cls = _WERKZEUG_MAP.get(exc.code or 500, BadRequest if (exc.code or 500) < 500 else FhirError)
    err = cls(exc.description if isinstance(exc.description, str) and exc.description else cls.title)
    if isinstance(exc, wz.MethodNotAllowed) and exc.valid_methods:
        err.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    if exc.code and exc.code != cls.status:
        err.status_override = exc.code  # type: ignore[attr-defined]
    return err


def render(err: FhirError):
    from fhir_api.http import fhir_response

    status = getattr(err, "status_override", err.status)
    body = operation_outcome(err.issues, err.code, err.slug)
    return fhir_response(body, status=status, headers=err.headers)


def register_error_handlers(app: Flask) -> None:
    """Route every exception through one renderer."""

    @app.errorhandler(FhirError)
    def _fhir_error(err: FhirError):
        return render(err)

    @app.errorhandler(wz.HTTPException)
    def _http_error(exc: wz.HTTPException):
        if exc.code == 413:
            return render(PayloadTooLarge(f"Request body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes"))
        return render(from_werkzeug(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        request_id = getattr(g, "request_id", "-")
        # Where it failed, not what it said: an exception's message can quote protected values.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unhandled %s on %s %s (request %s)\n%s",
            type(exc).__name__,
            request.method,
            request.path,
            request_id,
            frames,
        )
        return render(FhirError(f"Internal server error (request id {request_id})"))
