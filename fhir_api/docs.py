"""Human documentation served by the app itself: interactive API docs, error catalogue, deprecations.

The error catalogue is what every OperationOutcome links to; the deprecation notices are what Deprecation
and Sunset headers link to.

Everything is served from the installed packages, never a CDN (hospital networks block them): Swagger UI's
files come from the ``flask-swagger-ui`` distribution, the page and its start-up script from
``fhir_api/docs_ui/``. Each page's Content-Security-Policy allows this origin only and no inline script.
"""

from __future__ import annotations

import functools
import hashlib
from html import escape
from importlib import resources as package_files

from flask import Blueprint, Response, current_app, request

from fhir_api.deprecation import DEPRECATIONS_PATH, Retired, entries
from fhir_api.errors import DOCS_ERRORS_PATH, NotFound, all_error_classes

bp = Blueprint("docs", __name__)

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# 'self' only: scripts and styles are files from this server; Swagger UI's icons are data: URIs in its CSS;
# "Try it out" and the OpenAPI document are fetches to this origin.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SWAGGER_UI = "flask_swagger_ui"  # the distribution that ships Swagger UI's built files (dist/)
# name -> (package, folder, media type): only these files are served, whatever else the packages hold.
ASSETS: dict[str, tuple[str, str, str]] = {
    "docs.js": ("fhir_api", "docs_ui", "text/javascript"),
    "docs.css": ("fhir_api", "docs_ui", "text/css"),
    "swagger-ui-bundle.js": (_SWAGGER_UI, "dist", "text/javascript"),
    "swagger-ui.css": (_SWAGGER_UI, "dist", "text/css"),
    "favicon-32x32.png": (_SWAGGER_UI, "dist", "image/png"),
    "oauth2-redirect.html": (_SWAGGER_UI, "dist", "text/html"),  # the authorization-code flow's popup
    "oauth2-redirect.js": (_SWAGGER_UI, "dist", "text/javascript"),
    "LICENSE": (_SWAGGER_UI, "dist", "text/plain"),  # Swagger UI's (Apache-2.0)
}


@functools.cache
def _file(package: str, folder: str, name: str) -> tuple[bytes, str]:
    """A packaged file and its ETag, read once per process (installed files do not change under it)."""
    data = (package_files.files(package) / folder / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:32]


def _page(found: tuple[bytes, str], mimetype: str) -> Response:
    """A docs file, revalidated by ETag (no stale Swagger UI after an upgrade), with the docs' CSP."""
    data, etag = found
    resp = Response(data, mimetype=mimetype)
    resp.headers["Content-Security-Policy"] = UI_CSP
    resp.headers["Cache-Control"] = "no-cache"
    resp.set_etag(etag)
    return resp.make_conditional(request)


@bp.get(DOCS_PATH)
def ui() -> Response:
    """Interactive API documentation (Swagger UI) of this server's OpenAPI document.

    "Try it out" calls this server, with the access token pasted under Authorize.
    """
    return _page(_file("fhir_api", "docs_ui", "index.html"), "text/html")


@bp.get(f"{ASSETS_PATH}/<name>")
def ui_asset(name: str) -> Response:
    """A file of the interactive documentation (Swagger UI's scripts and styles, served from the package)."""
    found = ASSETS.get(name)
    if found is None:
        raise NotFound(f"{ASSETS_PATH} has no {name}")
    package, folder, mimetype = found
    return _page(_file(package, folder, name), mimetype)


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
    "code{background:#eee;padding:0 .2em}</style>"
)


def _html(title: str, body: str) -> Response:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} - FHIR R4 API</title>"
        f"{_STYLE}</head><body>{body}</body></html>"
    )
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return resp


@bp.get(DOCS_ERRORS_PATH)
def errors_page() -> Response:
    """Generated from the error classes, so a slug an OperationOutcome links to always has a section."""
    sections = "\n".join(
        f'<section id="{escape(cls.slug)}"><h2>{cls.status} {escape(cls.title)}</h2>'
        f"<p>Issue code <code>{escape(cls.code)}</code>. {escape(cls.explanation)}</p></section>"
        for cls in all_error_classes()
    )
    return _html(
        "Errors",
        "<h1>Errors</h1>"
        "<p>Every error is an OperationOutcome whose issue <code>details</code> links to one section below. "
        "Field errors carry a FHIRPath <code>expression</code> naming the element.</p>"
        f"{sections}",
    )


@bp.get(DEPRECATIONS_PATH)
def deprecations_page() -> Response:
    """What is deprecated here and when it goes: the notices Deprecation and Sunset headers link to."""
    listed = sorted(entries(current_app), key=lambda e: (e.sunset is None, e.sunset, e.deprecated, e.id))
    sections = "\n".join(
        f'<section id="{escape(e.id)}"><h2>{escape(e.target)}</h2><p>Deprecated '
        f"<time>{e.deprecated:%Y-%m-%d}</time>"
        + (
            f"; sunset <time>{e.sunset:%Y-%m-%d}</time>, from then on it answers 410 Gone"
            if e.sunset
            else "; no sunset date yet"
        )
        + ".</p>"
        + (f"<p>{escape(e.note)}</p>" if e.note else "")
        + (
            f'<p>Notice: <a href="{escape(e.href)}">{escape(e.href)}</a></p>'
            if not e.href.startswith(DEPRECATIONS_PATH)
            else ""
        )
        + "</section>"
        for e in listed
    )
    return _html(
        "Deprecations",
        "<h1>Deprecations</h1>"
        "<p>The FHIR version is in the path (<code>/fhir/R4</code>): a breaking change only ever comes "
        "with a new path. What this path loses is announced first, on every response it concerns, with a "
        "<code>Deprecation</code> header (the date it was or will be deprecated), a <code>Sunset</code> "
        'header (the date it stops answering) and a <code>Link</code> with <code>rel="deprecation"</code> '
        "to its section below; the OpenAPI document marks it <code>deprecated</code>. After the sunset date "
        "it answers 410 Gone with an OperationOutcome "
        f'(<a href="{DOCS_ERRORS_PATH}#{Retired.slug}">{escape(Retired.title)}</a>).</p>'
        + (sections or "<p>Nothing is deprecated.</p>"),
    )
