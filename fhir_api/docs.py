"""Human documentation served by the app itself: the error catalogue that every OperationOutcome links to."""

from __future__ import annotations

from html import escape

from flask import Blueprint, Response

from fhir_api.errors import DOCS_ERRORS_PATH, all_error_classes

bp = Blueprint("docs", __name__)


@bp.get(DOCS_ERRORS_PATH)
def errors_page() -> Response:
    """Generated from the error classes, so a slug an OperationOutcome links to always has a section."""
    sections = "\n".join(
        f'<section id="{escape(cls.slug)}"><h2>{cls.status} {escape(cls.title)}</h2>'
        f"<p>Issue code <code>{escape(cls.code)}</code>. {escape(cls.explanation)}</p></section>"
        for cls in all_error_classes()
    )
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Errors - FHIR R4 API</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
        "code{background:#eee;padding:0 .2em}</style></head><body><h1>Errors</h1>"
        "<p>Every error is an OperationOutcome whose issue <code>details</code> links to one section below. "
        "Field errors carry a FHIRPath <code>expression</code> naming the element.</p>"
        f"{sections}</body></html>"
    )
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return resp
